"""`fusionrec bench palr`: PALR on Amazon Beauty — SmolLM2-135M re-ranking SASRec's top-50 vs SASRec alone.

Stages, each through the project's real path, timed:
1. the processed Beauty folder (P5 files of ../shared/data/amazon_beauty; leave-one-out: train items[:-2],
   valid items[-2], test items[-1]); item text = the title cut to `title_words` words (prompt cost);
2. `fusionrec train palr --nproc 2` (torchrun, 2 CPU ranks, DeepSpeed engine, LoRA on SmolLM2-135M, bf16) with
   the recipe's default retriever: rank 0 trains SASRec-CE on the training split (launch/palr_retriever.py,
   the fast Beauty setting), rank 1 waits and loads it; the Recommend + Recommend_Retrieval examples of the
   paper's 20% of users are fine-tuned on for at most `max_minutes` of training (`train.max_minutes`: one
   epoch takes hours on 2 cores, so the run states how many examples it reached). The run folder is kept
   under $FUSIONREC_BENCH_DIR/palr/run: its TensorBoard events are the training curve;
3. `fusionrec export` of the run (LoRA merged) and the SASRec the run trained;
4. evaluation on test users: a seeded random permutation of all users is walked until `n_retrieved` users
   have their test target inside SASRec's top-50 (history items excluded, the Retriever contract). The
   fine-tuned and the zero-shot SmolLM2 both re-rank exactly those users (re-ranking cannot move a target
   that was not retrieved: for the others every order misses), so the figures over *all* walked users
   follow exactly, with -1 ranks for the rest. Re-ranking in bf16.

Lines: `palr-<set>-<metric>` for set = retrieved | all, one per comparison (fine-tuned vs SASRec order,
zero-shot vs SASRec order, fine-tuned vs zero-shot): both figures with 95% bootstrap intervals over users and
the paired difference with its interval; `palr-sasrec-test-full` (SASRec over all test users, for context:
paper Table 2 SASRec HR@10 .0617) and `palr-stage-seconds` (stage times, users/s, the loss curve).

    python -m fusionrec.bench.palr [--quick] [--record docs/results/palr.jsonl]
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch-free at import: the callback module is only named here
    from fusionrec.trainer.callbacks import HistoryCallback

os.environ.setdefault("HF_HUB_OFFLINE", "1")

METRICS = ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10")


@dataclass
class Plan:
    n_retrieved: int  # test users with the target in SASRec's top-50 that the LM re-ranks
    finetune_share: float  # share of users fine-tuned on (paper: 0.2)
    sasrec_epochs: int
    max_steps: int  # cap on optimizer steps (one epoch otherwise)
    max_minutes: float = 0.0  # wall-clock fine-tuning budget (the Trainer's train.max_minutes; 0 = none)
    micro_batch: int = 2  # per rank; 2 ranks -> 4 examples per step
    lr: float = 5e-4
    n_targets: int = 1  # answer items per example (paper: 10); the evaluation asks for the next item
    negatives: int = 9
    title_words: int = 6
    nproc: int = 2
    # bf16 weights, DeepSpeed bf16 (fp32 master weights) and bf16 re-ranking: oneDNN's AMX/AVX512-BF16 matmuls
    # re-rank 2.5x faster than fp32 on the 2-core Xeon (bench palr_rerank_speed: 1.54 users/s)
    precision: str = "bf16"
    seed: int = 0


# The paper's 20% of users (~4,470 users, ~8,900 examples), fine-tuned for as long as `max_minutes` allows
# (one epoch would take hours on 2 cores); 1,000 retrieved test users (of ~6,700 walked: every walked user is in
# the "all" lines, exactly) re-ranked by the fine-tuned AND the zero-shot model (~11 min each at ~1.5 users/s).
FULL = Plan(n_retrieved=1000, finetune_share=0.2, sasrec_epochs=8, max_steps=100_000, max_minutes=10, lr=5e-4)
QUICK = Plan(n_retrieved=3, finetune_share=0.001, sasrec_epochs=1, max_steps=3)


def _beauty() -> Path | None:
    from fusionrec.bench import find_shared

    found = find_shared("data/amazon_beauty/user_sequence.txt")
    return found.parent if found else None


def write_processed(src: Path, out: Path, title_words: int) -> tuple[dict[str, list[str]], dict[str, str]]:
    """items.parquet (item_id, short title) + sequences.parquet (user_id, item_ids in time order)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from fusionrec.data_pipeline.preprocess import build_sequences
    from fusionrec.data_pipeline.readers import read_p5

    raw = read_p5(src)
    seqs = build_sequences(raw.interactions)
    ids, titles = raw.items["item_id"].to_pylist(), raw.items["title"].to_pylist()
    text = [" ".join((t or i).split()[:title_words]) for i, t in zip(ids, titles, strict=True)]
    out.mkdir(parents=True)
    pq.write_table(pa.table({"item_id": ids, "text": text}), out / "items.parquet")
    pq.write_table(seqs.select(["user_id", "item_ids"]), out / "sequences.parquet")
    users = seqs["user_id"].to_pylist()
    return dict(zip(users, seqs["item_ids"].to_pylist(), strict=True)), dict(zip(ids, text, strict=True))


def _dtype(plan: Plan) -> str:
    return "bfloat16" if plan.precision == "bf16" else "float32"


def _overrides(plan: Plan, data_dir: Path, run_dir: Path) -> list[str]:
    return [
        f'palr.data_dir="{data_dir}"', 'palr.retriever="sasrec"', f"palr.retriever_epochs={plan.sasrec_epochs}",
        "palr.epochs=1", 'palr.model.name_or_path="smollm2-135m"', "palr.model.max_length=1024",
        "palr.model.lora.rank=16", "palr.model.lora.alpha=32", 'palr.model.lora.targets="all-linear"',
        f"palr.palr.finetune_share={plan.finetune_share}", f"palr.palr.negatives={plan.negatives}",
        f"palr.palr.tasks.n_targets={plan.n_targets}", f"palr.palr.seed={plan.seed}",
        f'palr.model.dtype="{_dtype(plan)}"', f'train.deepspeed.precision="{plan.precision}"',
        f'train.run_dir="{run_dir}"', f"train.max_steps={plan.max_steps}", f"train.max_minutes={plan.max_minutes}",
        "train.log_every=1", "train.tensorboard=true", "train.progress=false", "train.deepspeed.zero_stage=0",
        f"train.deepspeed.micro_batch_size={plan.micro_batch}", f"train.optim.lr={plan.lr}",
        "train.optim.warmup_steps=10",
    ]  # fmt: skip


def finetune(plan: Plan, data_dir: Path, run_dir: Path) -> float:
    """`fusionrec train palr` as a user runs it (torchrun with `nproc` ranks); returns wall seconds."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "fusionrec.launch.cli", "train", "palr", "--config", "palr_tiny",
           "--nproc", str(plan.nproc), *_overrides(plan, data_dir, run_dir)]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=sys.stderr, stderr=sys.stderr, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"fusionrec train palr failed (exit {done.returncode}); see stderr")
    return time.perf_counter() - t0


def walk_users(sequences: dict[str, list[str]], retriever, plan: Plan, top_n: int = 50) -> dict:
    """Seeded random test users until `n_retrieved` have the target in the top-n; SASRec order per user."""
    users = sorted(u for u, s in sequences.items() if len(s) >= 3)
    random.Random(plan.seed).shuffle(users)
    walked, retrieved = 0, []
    for lo in range(0, len(users), 256):
        chunk = users[lo : lo + 256]
        tops = retriever.retrieve_many([sequences[u][:-1] for u in chunk], top_n)
        for user, top in zip(chunk, tops, strict=True):
            walked += 1
            if sequences[user][-1] in top:
                retrieved.append((sequences[user][:-1], sequences[user][-1]))
            if len(retrieved) == plan.n_retrieved:
                return {"walked": walked, "retrieved": retrieved}
    return {"walked": walked, "retrieved": retrieved}


def sasrec_full_test(sequences: dict[str, list[str]], retriever) -> dict[str, float]:
    """HR/NDCG@10 of SASRec (history excluded) over every test user: the retrieval layer's own quality."""
    from fusionrec.trainer.recipes.palr.rerank import _rank_metrics

    users = [s for s in sequences.values() if len(s) >= 3]
    sums = dict.fromkeys(("HR@10", "NDCG@10", "HR@50"), 0.0)
    for lo in range(0, len(users), 1024):
        chunk = users[lo : lo + 1024]
        for seq, top in zip(chunk, retriever.retrieve_many([s[:-1] for s in chunk], 50), strict=True):
            rank = top.index(seq[-1]) if seq[-1] in top else None
            m = _rank_metrics(rank, (10, 50))
            for k in sums:
                sums[k] += m[k]
    return {k: v / len(users) for k, v in sums.items()} | {"users": len(users)}


def rerank(model_path: str, users: list, text: dict[str, str], retriever, plan: Plan) -> tuple[list, float]:
    """Per-user (SASRec rank, LM rank) of one LM folder on `users`, with the wall seconds of scoring."""
    from fusionrec.trainer.models.causal_lm import CausalLMConfig, build_causal_lm, load_tokenizer
    from fusionrec.trainer.recipes.palr.data import PALRConfig, PALRTaskConfig
    from fusionrec.trainer.recipes.palr.rerank import rerank_ranks

    cfg = CausalLMConfig(name_or_path=model_path, dtype=_dtype(plan))
    model, tok = build_causal_lm(cfg).eval(), load_tokenizer(cfg)
    # The instruction must read as in fine-tuning (same task config as the recipe's).
    palr = PALRConfig(top_n=50, tasks=PALRTaskConfig(n_targets=plan.n_targets))
    t0 = time.perf_counter()
    ranks = rerank_ranks(model, tok, users, text, retriever, palr)
    return ranks, time.perf_counter() - t0


COMPARISONS = (("finetuned", "sasrec"), ("zeroshot", "sasrec"), ("finetuned", "zeroshot"))
SETS = {"retrieved": "test users with the target in SASRec's top-50",
        "all": "all walked test users (seeded random sample; a target SASRec did not retrieve is a miss for every order)"}  # fmt: skip


def rank_arrays(finetuned: list, zeroshot: list, n_walked: int) -> dict[str, dict[str, np.ndarray]]:
    """0-based target ranks per user of SASRec's order and of both LMs' re-rankings, on the retrieved users
    and on all walked users (-1 for a target outside the top-50: no re-ranking can reach it)."""
    assert [r for r, _ in finetuned] == [r for r, _ in zeroshot], "both LMs must re-rank the same users"
    retrieved = {"sasrec": [r for r, _ in finetuned], "finetuned": [r for _, r in finetuned],
                 "zeroshot": [r for _, r in zeroshot]}  # fmt: skip
    pad = [-1] * (n_walked - len(finetuned))
    return {
        "retrieved": {k: np.asarray(v, dtype=np.int64) for k, v in retrieved.items()},
        "all": {k: np.asarray(v + pad, dtype=np.int64) for k, v in retrieved.items()},
    }


def comparison_lines(ranks: dict[str, dict[str, np.ndarray]], extra: dict) -> list[dict]:
    """One line per (set, A vs B, metric): both figures with their 95% bootstrap intervals over users and the
    paired difference A - B with its interval (A beats B when it excludes zero)."""
    from fusionrec.cluster.results import paired_difference, rank_interval

    def r4(xs: list[float]) -> list[float]:
        return [round(x, 4) for x in xs]

    lines = []
    for name, orders in ranks.items():
        for a, b in COMPARISONS:
            for m in METRICS if name == "retrieved" else ("HR@10", "NDCG@10"):
                d = paired_difference(orders[a], orders[b], m)
                lines.append({"bench": f"palr-{name}-{m}", "model": a, "baseline_model": b, "ours": round(d["a"], 4),
                              "ci95": r4(rank_interval(orders[a], m)), "baseline": round(d["b"], 4),
                              "baseline_ci95": r4(rank_interval(orders[b], m)), "difference": round(d["difference"], 4),
                              "difference_ci95": r4(d["interval"]), "users": d["users"],
                              "unit": f"{m} ({SETS[name]}; ours: {a}, baseline: {b}, same users)", **extra})  # fmt: skip
    return lines


def logged_losses(history: HistoryCallback) -> list[float]:
    """The PALR loss of every log line a `trainer.callbacks.HistoryCallback` kept, in order (4 decimals)."""
    return [round(float(log["palr/loss"]), 4) for log in history.logs if "palr/loss" in log]


def loss_curve(losses: list[float], window: int = 10, ema: float = 0.1) -> dict:
    """Per-step losses summarised so that a trend is visible through batch noise: means of consecutive
    `window`-step windows and the last value of an exponential moving average (weight `ema` per step).

    A single logged value is a mean over a handful of examples of two tasks whose base losses differ ~4x
    (Recommend ~5 nats/token, Recommend_Retrieval ~1.4 on Beauty): its noise (sd ~.35 over 20 examples,
    `bench/palr_loss_diagnosis.py`) hides any trend of one log vs another.
    """
    avg = None
    for x in losses:
        avg = x if avg is None else (1 - ema) * avg + ema * x
    means = [
        round(sum(losses[i : i + window]) / len(losses[i : i + window]), 4)
        for i in range(0, len(losses), window)
    ]
    return {"window_means": means, "window": window, "ema_last": None if avg is None else round(avg, 4)}


def _train_facts(run_dir: Path, n_users: int, plan: Plan) -> dict:
    summary = json.loads((run_dir / "train_summary.json").read_text())
    logs = [log for log in summary["logs"] if "palr/loss" in log]
    users = max(1, int(n_users * plan.finetune_share))
    return {"steps": summary.get("step"), "finetune_users": users, "finetune_examples": 2 * users,
            "examples_trained": (summary.get("step") or 0) * plan.micro_batch * plan.nproc,
            "first_log": logs[0] if logs else None, "last_log": logs[-1] if logs else None,
            "loss_curve": loss_curve([log["palr/loss"] for log in logs]),
            "tensorboard": str(run_dir / "tensorboard")}  # fmt: skip


def _run_dir(quick: bool) -> Path:
    """The fine-tuning run's folder, kept after the bench (its TensorBoard events are the training curve)."""
    import shutil

    root = Path(os.environ.get("FUSIONREC_BENCH_DIR", "runs/bench")).resolve() / "palr"
    run_dir = root / ("run-quick" if quick else "run")
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time: one curve per folder
    return run_dir


def run(quick: bool = False) -> list[dict]:
    from fusionrec.bench import provenance
    from fusionrec.cluster.baselines import load_sasrec
    from fusionrec.launch.export import export_checkpoint
    from fusionrec.launch.palr_retriever import RETRIEVER_DIR
    from fusionrec.trainer.recipes.palr.rerank import SASRecRetriever

    plan, beauty = (QUICK if quick else FULL), _beauty()
    if beauty is None:
        return [{"bench": "palr", "skipped": "../shared/data/amazon_beauty not found"}]
    sec: dict[str, float] = {}
    t_start, run_dir = time.perf_counter(), _run_dir(quick)
    with tempfile.TemporaryDirectory(prefix="palr-bench-") as tmp:
        tmp, t0 = Path(tmp), time.perf_counter()
        sequences, text = write_processed(beauty, tmp / "beauty", plan.title_words)
        sec["data"] = time.perf_counter() - t0
        sec["train_cli_total"] = finetune(plan, tmp / "beauty", run_dir)
        sasrec = json.loads((run_dir / RETRIEVER_DIR.parent / "sasrec.train.json").read_text())
        sec["sasrec_train_in_rank0"] = sasrec["seconds"]
        t0 = time.perf_counter()
        ranker = export_checkpoint(run_dir, tmp / "export")["ranker"]
        sec["export"] = time.perf_counter() - t0
        retriever = SASRecRetriever(*load_sasrec(run_dir / RETRIEVER_DIR))
        t0 = time.perf_counter()
        full, walk = sasrec_full_test(sequences, retriever), walk_users(sequences, retriever, plan)
        sec["sasrec_eval"] = time.perf_counter() - t0
        ft, sec["rerank_finetuned"] = rerank(str(ranker), walk["retrieved"], text, retriever, plan)
        zs, sec["rerank_zeroshot"] = rerank("smollm2-135m", walk["retrieved"], text, retriever, plan)
    facts = _train_facts(run_dir, len(sequences), plan)
    meta = {"quick": quick, "precision": plan.precision, **provenance()}
    ctx = {"steps": facts["steps"], "finetune_users": facts["finetune_users"], **meta}
    lines = comparison_lines(rank_arrays(ft, zs, walk["walked"]), ctx)
    lines.append({"bench": "palr-sasrec-test-full", "ours": round(full["HR@10"], 4), "baseline": 0.0617,
                  "ratio": round(full["HR@10"] / 0.0617, 3), "unit": "HR@10 (SASRec retriever, all test users, "
                  "history excluded; baseline: paper Table 2 SASRec)", **full, "sasrec_train": sasrec, **meta})  # fmt: skip
    lines.append({"bench": "palr-stage-seconds", "ours": round(time.perf_counter() - t_start, 1), "unit": "s (wall, "
                  "whole benchmark; train_cli_total includes sasrec_train_in_rank0)", **{k: round(v, 1) for k, v in sec.items()},
                  "users_per_s": {m: round(len(ft) / max(sec[f"rerank_{m}"], 1e-9), 3) for m in ("finetuned", "zeroshot")},
                  "walked_users": walk["walked"], "plan": asdict(plan), **facts, **meta})  # fmt: skip
    return lines


def main() -> None:
    from fusionrec.bench import cli_parser, emit

    args = cli_parser(__doc__, "smoke run: 3 retrieved users, 3 fine-tuning steps").parse_args()
    emit(run(quick=args.quick), args.record)


if __name__ == "__main__":
    main()
