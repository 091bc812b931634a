#!/usr/bin/env bash
# Copy the slice of ../shared that `fusionrec bench gpu` reads into gpu_shared/ (git-ignored, ~5.5 MB), so a
# device run can `carry` it: ../shared itself never travels to the GPU machine.
#   bash launch/gpu_slice.sh [SHARED_DIR]      # default: $FUSIONREC_SHARED_DIR, else ../shared
set -euo pipefail
cd "$(dirname "$0")/.."
src="${1:-${FUSIONREC_SHARED_DIR:-../shared}}"
for f in data/amazon_beauty/item_plain_text.txt data/amazon_beauty/user_sequence.txt assets/t5-tokenizer; do
  [ -e "$src/$f" ] || { echo "gpu_slice: $src/$f not found" >&2; exit 2; }
done
rm -rf gpu_shared.tmp && mkdir -p gpu_shared.tmp/data/amazon_beauty gpu_shared.tmp/assets
cp "$src"/data/amazon_beauty/{item_plain_text.txt,user_sequence.txt} gpu_shared.tmp/data/amazon_beauty/
cp -r "$src/assets/t5-tokenizer" gpu_shared.tmp/assets/
rm -rf gpu_shared && mv gpu_shared.tmp gpu_shared  # never a half-copied slice
du -sh gpu_shared
