"""`fusionrec bench zeroshot`: pretrain on real Amazon Beauty + Sports, test zero-shot on real Amazon Toys.

The foundation-model claim on real data, as a user would run it (`launch/configs/zeroshot_toys_cpu.toml`):
1. prepare the three real P5 sets into one Fusion corpus (Beauty + Sports pretraining, Toys held out; the
   leakage check compares ASINs, P5 user numbers are per file),
2. `fusionrec train idgenrec --nproc 2` on title IDs for a budget of recommender steps,
3. `fusionrec zeroshot`: Toys' 11,924 unseen items get title IDs (the scheme the model was trained on), their
   quality is checked, then a seeded sample of 2,000 Toys test users is ranked over all Toys items by the
   trie-constrained beam search on Ray actors.
Every stage is resumable: a finished stage is skipped, a killed training resumes from its last checkpoint,
a killed zero-shot run keeps its finished evaluation units.

Lines: HR@10 (then NDCG@10) of the zero-shot model with its 95% interval (bootstrap over users) against the
exact random ranking (`ratio` = ours / random; the goal is >= 10x), the in-domain most-popular row labelled
"not zero-shot", and — as a reference that is NOT comparable (other pretraining data, other test users) — the
paper's Table 7 for Toys: IDGenRec .0215, UniSRec .0175 (19 Amazon datasets in pretraining).

    python -m fusionrec.bench.zeroshot [--quick] [--steps N] [--record docs/results/zeroshot.jsonl]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fusionrec.bench import cli_parser, emit, find_shared, provenance

CONFIG = Path(__file__).resolve().parents[1] / "launch" / "configs" / "zeroshot_toys_cpu.toml"
PAPER_TOYS = {"source": "IDGenRec paper Table 7: pretrained on 19 other Amazon datasets, full Toys test set",
              "IDGenRec": {"HR@5": 0.0103, "NDCG@5": 0.0079, "HR@10": 0.0215, "NDCG@10": 0.0114},
              "UniSRec": {"HR@5": 0.0097, "NDCG@5": 0.0055, "HR@10": 0.0175, "NDCG@10": 0.0080}}  # fmt: skip
FULL = {"steps": 1500, "users": 2000}
QUICK = {"steps": 20, "users": 100}


def _cli(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "fusionrec.launch.cli", *args], check=True, env=env)


def _config(cache: Path, shared_data: Path) -> Path:
    """The shipped config with its ../shared inputs pointed at the shared folder found on this machine."""
    text = CONFIG.read_text().replace('"../shared/data/', f'"{shared_data}/')
    text = text.replace('"../shared/assets/', f'"{shared_data.parent / "assets"}/')
    path = cache / "zeroshot_toys_cpu.toml"
    cache.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def _stages(cfg: Path, cache: Path, plan: dict[str, int]) -> dict[str, Any]:
    """prepare (shared by every budget) -> train (one run per step budget) -> zeroshot (per user sample)."""
    corpus, run = cache / "corpus", cache / f"run-{plan['steps']}"
    results = cache / f"run-{plan['steps']}-zeroshot-{plan['users']}"
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if not (corpus / "manifest.json").is_file():
        _cli("prepare", "--config", str(cfg), f'data.out="{corpus}"')
    timings["prepare_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if not (run / "train_summary.json").is_file():
        steps = plan["steps"]
        _cli("train", "idgenrec", "--config", str(cfg), "--nproc", "2", f'train.run_dir="{run}"',
             f'corpus="{corpus}"', f'idgenrec.data.corpus="{corpus}"', f"idgenrec.rec_steps={steps}",
             f"train.optim.total_steps={steps}", "train.optim.min_lr_ratio=0.1", "train.progress=false",
             "idgenrec.data.max_valid_samples=2048")  # fmt: skip
    timings["train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if not (results / "zeroshot.md").is_file():
        _cli("zeroshot", "--config", str(cfg), f'zeroshot.checkpoint="{run}"', f'zeroshot.corpus="{corpus}"',
             f'zeroshot.results_dir="{results}"', f"zeroshot.generative.max_users={plan['users']}")  # fmt: skip
    timings["zeroshot_s"] = time.perf_counter() - t0
    summary = json.loads((run / "train_summary.json").read_text())
    return {"record": json.loads((results / "amazon_toys.json").read_text()), "timings": timings,
            "train": {"steps": summary["step"], "samples": summary["samples_seen"]}}  # fmt: skip


def _lines(out: dict[str, Any], plan: dict[str, int], quick: bool) -> list[dict]:
    rec = out["record"]
    ctx = {"mode": "quick" if quick else "full", "users": rec["users"], "split_users": rec["split_users"],
           "users_selection": rec["users_selection"], "items": rec["id_table"]["items"],
           "id_scheme": rec["id_scheme"]["scheme"], "id_quality": rec["id_table"]["stats"].get("quality"),
           "train_steps": out["train"]["steps"], "train_samples": out["train"]["samples"],
           "stage_seconds": {k: round(v, 1) for k, v in out["timings"].items()},
           "eval_seconds": round(rec["seconds"], 1), "pretrain": ["amazon_beauty", "amazon_sports"],
           "heldout": "amazon_toys", "scenario": rec.get("scenario"), **provenance()}  # fmt: skip
    lines = []
    for metric in ("HR@10", "NDCG@10", "HR@5", "NDCG@5"):
        ours, rand = rec["metrics"][metric], rec["random"][metric]
        pop = (rec.get("most_popular") or {}).get("metrics", {}).get(metric)
        lines.append({
            "bench": f"zeroshot_toys_{metric.lower().replace('@', '')}", "ours": round(ours, 5),
            "ci95": [round(x, 5) for x in rec["intervals"][metric]], "baseline": round(rand, 6),
            "ratio": round(ours / rand, 2) if rand else None,
            "unit": f"{metric} zero-shot (baseline: exact random ranking over the held-out items)",
            "most_popular_not_zero_shot": pop, "reference_not_comparable": {
                m: PAPER_TOYS[m][metric] for m in ("IDGenRec", "UniSRec")} | {"source": PAPER_TOYS["source"]},
            **ctx,
        })  # fmt: skip
    return lines


def run(quick: bool = False, steps: int | None = None) -> list[dict]:
    data = find_shared("data/amazon_toys/user_sequence.txt")
    if data is None or find_shared("assets/t5-tokenizer/tokenizer.json") is None:
        return [{"bench": "zeroshot_toys", "skipped": "../shared data/amazon_* or assets/t5-tokenizer missing"}]
    plan = dict(QUICK if quick else FULL)
    plan["steps"] = steps or int(os.environ.get("FUSIONREC_ZEROSHOT_STEPS", plan["steps"]))
    cache = Path(os.environ.get("FUSIONREC_BENCH_DIR", "runs/bench")).resolve() / "zeroshot"
    cfg = _config(cache, data.parent.parent)
    return _lines(_stages(cfg, cache, plan), plan, quick)


def main() -> None:
    parser = cli_parser(__doc__, "smoke run: 20 steps, 100 users")
    parser.add_argument("--steps", type=int, default=None, help="recommender steps (default 1500)")
    args = parser.parse_args()
    emit(run(args.quick, args.steps), args.record)


if __name__ == "__main__":
    main()
