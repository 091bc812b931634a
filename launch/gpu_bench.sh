#!/usr/bin/env bash
# Run one `fusionrec bench gpu` suite ON the GPU machine (its image: torch, transformers, pytest; no network).
# The repo travels as the working tree, the data slice as gpu_shared/ (launch/gpu_slice.sh, then `carry`):
#   device run: bash launch/gpu_bench.sh core        (carry: ["gpu_shared"]; lines land in $OUT)
# Installs this checkout editable without dependencies (the image's torch/transformers stay), then runs the
# suite; every JSON line is appended to $OUT/gpu_SUITE.jsonl as it is measured, the log to $OUT/gpu_SUITE.log.
set -uo pipefail
cd "$(dirname "$0")/.."
suite="${1:-core}"
out="${OUT:-out}"
mkdir -p "$out"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  if [ -d gpu_wheels ]; then  # launch/gpu_wheels.sh: deepspeed, webdataset, ... (carry ["gpu_wheels"])
    python3 -m pip install --no-deps --no-index -q gpu_wheels/*.whl 2>&1 | tail -3
  fi
  python3 -m pip install --no-deps --no-build-isolation -q -e . 2>&1 | tail -3
  FUSIONREC_SHARED_DIR="$PWD/gpu_shared" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    python3 -m fusionrec.bench.gpu --suite "$suite" --record "$out/gpu_$suite.jsonl"
} >"$out/gpu_$suite.log" 2>&1
rc=$?
tail -20 "$out/gpu_$suite.log"
exit $rc
