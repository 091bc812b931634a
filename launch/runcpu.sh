#!/usr/bin/env bash
# The README's first command: set up .venv, then run the whole fusionrec pipeline on the embedded default
# (local in-process Ray, DeepSpeed on 2 CPU processes, generated data). Extra arguments go to `fusionrec demo`
# (e.g. `--out /tmp/demo`, `--users 500`, or config overrides like `idgenrec.rounds=3`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/launch/setup_venv.sh"
cd "$ROOT"
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_AUTH_MODE=disabled \
  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/fusionrec demo "$@"
