#!/usr/bin/env bash
# Wheels the GPU image lacks (it has torch, transformers, pyarrow, peft, ...; no deepspeed, webdataset, hjson,
# pydantic, tomli-w, and no registry), at the versions of the CPU lock, into git-ignored gpu_wheels/ for a
# device run to `carry`; launch/gpu_bench.sh installs them with --no-deps --no-index. Ray's 79 MB wheel
# exceeds what a run can carry: GPU runs score without Ray (bench quality --actors 0).
#   bash launch/gpu_wheels.sh        # needs the package registry (this build machine has it)
set -euo pipefail
cd "$(dirname "$0")/.."
lock=launch/constraints-cpu.txt
pin() { grep -i -E "^$1==" "$lock" | head -1; }
py="${PYTHON:-.venv/bin/python}"
rm -rf gpu_wheels.tmp && mkdir gpu_wheels.tmp
# deepspeed is an sdist on PyPI: a pure-Python wheel built here (its ops JIT-build on the GPU if ever used).
DS_BUILD_OPS=0 "$py" -m pip wheel -q --no-deps -w gpu_wheels.tmp "$(pin deepspeed)"
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --abi abi3 --abi none --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
  -d gpu_wheels.tmp "$(pin webdataset)" "$(pin braceexpand)" "$(pin hjson)" "$(pin pydantic)" \
  "$(pin pydantic_core)" "$(pin annotated-types)" "$(pin typing-inspection)" "$(pin tomli_w)"
rm -rf gpu_wheels && mv gpu_wheels.tmp gpu_wheels  # never a half-filled folder
ls gpu_wheels && du -sh gpu_wheels
