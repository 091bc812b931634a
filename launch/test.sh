#!/usr/bin/env bash
# The README's test command: set up .venv, lint, then run every test but `gpu`, `stress` and `long` ones (slow ones
# skip when ../shared/data is absent). Extra arguments go to pytest, e.g. `bash launch/test.sh -m unit`;
# `bash launch/test.sh -m long` runs the minutes-long real-data checks (PALR memorising with SmolLM2, SASRec on Beauty).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/launch/setup_venv.sh"
cd "$ROOT"
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_AUTH_MODE=disabled \
  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0
.venv/bin/ruff check .
if [ "$#" -eq 0 ]; then set -- -m "not gpu and not stress and not long"; fi
exec .venv/bin/python -m pytest -p no:cacheprovider --timeout 900 "$@"
