"""`fusionrec bench rec_width`: what does a wider IDGenRec recommender cost per step on this machine?

The shipped CPU recipe (idgenrec_beauty_cpu) uses a d128, 2+2-layer T5 because a wider one was slower per
step on the AVX2 CPU it was tuned on. bf16 matmuls on AMX/AVX512-BF16 CPUs change that trade: this runs the
real recipe (`fusionrec train idgenrec --nproc 2`, DeepSpeed bf16, real Beauty, title IDs) for `steps` steps
at each width of `WIDTHS` and reports seconds per step (the trainer's own clock, the first `warm` steps
excluded through a second, shorter run's time) and the ratio to d128 measured in the same run. Speed only:
what each width learns per training minute is bench quality's question (`--set idgenrec.recommender...`).

    python -m fusionrec.bench.rec_width [--quick] [--record F]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from fusionrec.bench import cli_parser, emit, find_shared, provenance
from fusionrec.bench.idgenrec_beauty import CONFIG, _env, _prepare

WIDTHS = ((128, 256, 4), (256, 1024, 4), (512, 2048, 8))  # d_model, d_ff, heads (t5-small is 512/2048/8)
FULL = {"steps": 150, "warm": 30}
QUICK = {"steps": 12, "warm": 4}


def _seconds(corpus: Path, tok: Path, run_dir: Path, overrides: list[str], steps: int) -> float:
    """Training seconds (the trainer's clock) of `steps` steps of the CPU recipe with `overrides`."""
    cmd = [sys.executable, "-m", "fusionrec.launch.cli", "train", "idgenrec", "--config", CONFIG, "--nproc", "2",
           f'train.run_dir="{run_dir}"', f'idgenrec.data.corpus="{corpus}"', f'idgenrec.pretrained_tokenizer="{tok}"',
           "train.progress=false", "train.eval_every=0", f"train.max_steps={steps}", f"train.log_every={steps}",
           "train.checkpoint.every_steps=0", "train.checkpoint.save_at_end=false", *overrides]  # fmt: skip
    subprocess.run(cmd, check=True, env=_env(), stdout=subprocess.DEVNULL)
    return json.loads((run_dir / "train_summary.json").read_text())["train_seconds"]


def seconds_per_step(corpus: Path, tok: Path, run_dir: Path, overrides: list[str], plan: dict) -> float:
    """Seconds per step after warm-up: a run of plan["steps"] minus a run of plan["warm"] steps (start-up,
    the tokenizer, the ID table and the first slow steps cancel)."""
    full = _seconds(corpus, tok, run_dir / "full", overrides, plan["steps"])
    warm = _seconds(corpus, tok, run_dir / "warm", overrides, plan["warm"])
    return (full - warm) / (plan["steps"] - plan["warm"])


def _width(width: tuple[int, int, int]) -> list[str]:
    d, ff, heads = width
    return [f"idgenrec.recommender.d_model={d}", f"idgenrec.recommender.d_ff={ff}",
            f"idgenrec.recommender.num_heads={heads}"]  # fmt: skip


def beauty_corpus() -> tuple[Path, Path] | None:
    """(bench quality's prepared real-Beauty corpus, prepared once; the T5 tokenizer folder), or None when
    ../shared lacks them."""
    beauty = find_shared("data/amazon_beauty/user_sequence.txt")
    t5 = find_shared("assets/t5-tokenizer/tokenizer.json")
    if beauty is None or t5 is None:
        return None
    cache = Path(os.environ.get("FUSIONREC_BENCH_DIR", "runs/bench")).resolve()
    return _prepare(beauty.parent, cache / "quality" / "corpus"), t5.parent


MISSING = "../shared data/amazon_beauty or assets/t5-tokenizer missing"


def run(quick: bool = False) -> list[dict]:
    found = beauty_corpus()
    if found is None:
        return [{"bench": "rec_width", "skipped": MISSING}]
    corpus, tok = found
    plan, meta = (QUICK if quick else FULL), {"quick": quick, "config": CONFIG, **provenance()}
    per_step = {}
    with tempfile.TemporaryDirectory(prefix="rec-width-") as tmp:
        for width in WIDTHS:
            run_dir = Path(tmp) / f"d{width[0]}"
            per_step[width] = seconds_per_step(corpus, tok, run_dir, _width(width), plan)
    base = per_step[WIDTHS[0]]
    return [{"bench": "rec_width", "model": f"d{d} ff{ff} h{h}", "ours": round(s, 4), "baseline": round(base, 4),
             "ratio": round(s / base, 3), "unit": "s/step, 64 samples, 2 ranks bf16 (baseline: d128, same run)",
             "steps_timed": plan["steps"] - plan["warm"], **meta}
            for (d, ff, h), s in per_step.items()]  # fmt: skip


def main() -> None:
    args = cli_parser(__doc__, "smoke run: 12 steps per width").parse_args()
    emit(run(quick=args.quick), args.record)


if __name__ == "__main__":
    main()
