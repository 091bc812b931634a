#!/usr/bin/env bash
# Several `fusionrec bench gpu` suites in ONE device call (the machine's start-up is paid once), each under its
# own time limit and all inside the call's budget, in the order given (lowest suite not yet recorded first):
#   device run (carry ["gpu_shared", "gpu_wheels"], timeout_s 600): bash launch/gpu_session.sh core train llm
# Each suite is launch/gpu_bench.sh SUITE: its lines land in $OUT/gpu_SUITE.jsonl as they are measured and its
# log in $OUT/gpu_SUITE.log, so a suite cut off by its limit keeps what it measured and the next one still runs.
# Limits (seconds): FUSIONREC_GPU_SESSION_S (the whole session, default 560: inside the call's 600 with the
# install), and per suite FUSIONREC_GPU_LIMIT_CORE / _TRAIN / _LLM / _QUALITY (defaults below); a suite gets
# the smaller of its own limit and what is left, and is skipped when under 60 s are left.
set -uo pipefail
cd "$(dirname "$0")/.."
[ "$#" -gt 0 ] || set -- core train llm
mkdir -p "${OUT:-out}"
start=$(date +%s)
total="${FUSIONREC_GPU_SESSION_S:-560}"
declare -A default=([core]=300 [train]=120 [llm]=180 [quality]=540)
status=0
for suite in "$@"; do
  var="FUSIONREC_GPU_LIMIT_${suite^^}"
  own="${!var:-${default[$suite]:-300}}"
  left=$((total - ($(date +%s) - start)))
  if [ "$left" -lt 60 ]; then
    echo "[gpu_session] $suite skipped: ${left}s left" | tee -a "${OUT:-out}/gpu_session.log"
    continue
  fi
  limit=$((own < left ? own : left))
  # the gpu tests run last in `core`: they get what its measurements leave of its limit
  FUSIONREC_GPU_TESTS_LIMIT_S=$((limit > 150 ? limit - 120 : 30)) FUSIONREC_GPU_LIMIT_S="$limit" \
    bash launch/gpu_bench.sh "$suite"
  rc=$?
  echo "[gpu_session] $suite rc=$rc limit=${limit}s elapsed=$(($(date +%s) - start))s" | tee -a "${OUT:-out}/gpu_session.log"
  [ "$rc" -eq 0 ] || status=$rc
done
exit $status
