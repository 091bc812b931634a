#!/usr/bin/env bash
# Run one `fusionrec bench gpu` suite ON the GPU machine (its image: torch, transformers, pytest; no network).
# The repo travels as the working tree, the data slice as gpu_shared/ (launch/gpu_slice.sh), the wheels the
# image lacks as gpu_wheels/ (launch/gpu_wheels.sh); `carry` both:
#   device run: bash launch/gpu_bench.sh core                        (lines land in $OUT)
#   device run: bash launch/gpu_bench.sh quality --variant collab256   (bench quality on the GPU, ~7 minutes)
#   device run: bash launch/gpu_bench.sh llm                         (7B LoRA ZeRO-3 step; carry gpu_wheels)
# Installs the wheels and this checkout editable without dependencies (the image's torch/transformers stay),
# then runs the suite (extra arguments go to it) under a time limit (FUSIONREC_GPU_LIMIT_S, default 540 s:
# inside the device call's 600) so what follows always runs: every JSON line is appended to
# $OUT/gpu_SUITE.jsonl as it is measured, the log goes to $OUT/gpu_SUITE.log, and the quality suite's stage
# results (small JSONs, training summaries and TensorBoard files; no corpus or checkpoints) to
# $OUT/gpu_SUITE_stages.tar.gz, so a run cut off by the limit still brings back the stages it finished.
set -uo pipefail
cd "$(dirname "$0")/.."
suite="${1:-core}"
shift || true
out="${OUT:-out}"
bench_dir="$PWD/runs/bench"
mkdir -p "$out"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  if [ -d gpu_wheels ]; then
    python3 -m pip install --no-deps --no-index -q gpu_wheels/*.whl 2>&1 | tail -3
  fi
  python3 -m pip install --no-deps --no-build-isolation -q -e . 2>&1 | tail -3
  FUSIONREC_SHARED_DIR="$PWD/gpu_shared" FUSIONREC_BENCH_DIR="$bench_dir" HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false timeout --signal=INT --kill-after=20 "${FUSIONREC_GPU_LIMIT_S:-540}" \
    python3 -m fusionrec.bench.gpu --suite "$suite" --record "$out/gpu_$suite.jsonl" "$@"
} >"$out/gpu_$suite.log" 2>&1
rc=$?
if [ -d "$bench_dir/quality" ]; then
  tar czf "$out/gpu_${suite}_stages.tar.gz" -C "$bench_dir" --exclude=corpus --exclude=checkpoints \
    --exclude='*.safetensors' --exclude=units quality
fi
tail -20 "$out/gpu_$suite.log"
exit $rc
