"""`fusionrec bench demo`: the README's main job (`fusionrec demo`) run end to end, its verdict as JSON lines.

One bench run = one demo run in a fresh folder (a subprocess, timed): every model comparison of its verdict
becomes a line, measured on the same seeded users in the same run:

- `demo_hr10` (one per pretraining platform and pair): ours = model A's HR@10, baseline = model B's,
  `difference` with its paired 95% bootstrap interval over users (`difference_ci95`), `outcome` as the verdict says it;
- `demo_zeroshot_hr10` (one per held-out platform): ours = zero-shot HR@10 with its 95% interval, baseline =
  the exact random expectation (k / #items);
- `demo_seconds`: wall seconds of the whole demo (no install: the venv exists) and of each stage.

`--quick` shrinks the world and the schedule (a smoke run: its numbers say nothing).

    python -m fusionrec.bench.demo [--quick] [--record docs/results/demo.jsonl]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fusionrec.bench import cli_parser, emit, provenance

QUICK = ["--users", "300", "--items", "150", "idgenrec.rec_steps=30"]
STAGE = re.compile(r"^\s*stage times:\s*(.*)$", re.MULTILINE)


def _run_demo(out: Path, quick: bool) -> tuple[float, str]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "fusionrec.launch.cli", "demo", "--out", str(out), *(QUICK if quick else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"fusionrec demo failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return seconds, proc.stdout


def _stage_seconds(stdout: str) -> dict[str, float]:
    """'1/7 5s, 2/7 11s, ...' from the demo's last lines."""
    match = STAGE.search(stdout)
    if not match:
        return {}
    parts = (p.strip().split() for p in match.group(1).split(","))
    return {stage: float(secs.rstrip("s")) for stage, secs in parts}


def lines_from_verdict(verdict: dict[str, Any], ctx: dict[str, Any]) -> list[dict[str, Any]]:
    """The verdict's comparisons as bench lines (no number is recomputed here)."""
    out = []
    for v in verdict["pretraining"]:
        out.append({"bench": "demo_hr10", "model": f"{v['model_a']} vs {v['model_b']}", "dataset": v["dataset"],
                    "ours": v["a"], "baseline": v["b"], "difference": v["difference"], "difference_ci95": v["interval"],
                    "users": v["users"], "outcome": v["outcome"],
                    "unit": "HR@10 (interval: of ours - baseline, paired over users)", **ctx})  # fmt: skip
    for z in verdict["zeroshot"]:
        out.append({"bench": "demo_zeroshot_hr10", "model": "idgenrec zero-shot", "dataset": z["dataset"],
                    "ours": z["value"], "ci95": z["interval"], "baseline": z["random"], "ratio": z["ratio"],
                    "users": z["users"], "outcome": z["outcome"],
                    "unit": "HR@10 (baseline: exact random ranking)", **ctx})  # fmt: skip
    return out


def run(quick: bool = False) -> list[dict]:
    out = (
        Path(os.environ.get("FUSIONREC_BENCH_DIR", "runs/bench")).resolve()
        / "demo"
        / ("quick" if quick else "full")
    )
    seconds, stdout = _run_demo(out, quick)
    verdict = json.loads((out / "train" / "verdict.json").read_text())
    ctx = {"mode": "quick" if quick else "full", **provenance()}
    timing = {"bench": "demo_seconds", "ours": round(seconds, 1), "baseline": 900.0,
              "unit": "s: fusionrec demo wall time, venv present (baseline: the 15-minute budget incl. install)",
              "stage_seconds": _stage_seconds(stdout), **ctx}  # fmt: skip
    return [timing, *lines_from_verdict(verdict, ctx)]


def main() -> None:
    parser = cli_parser(__doc__, "smoke run: a tiny world and 30 steps")
    args = parser.parse_args()
    emit(run(args.quick), args.record)


if __name__ == "__main__":
    main()
