"""`fusionrec bench palr`: PALR on Amazon Beauty — SmolLM2-135M re-ranking SASRec's top-50 vs SASRec alone.

Stages, each through the project's real path, timed:
1. the processed Beauty folder (P5 files of ../shared/data/amazon_beauty; leave-one-out: train items[:-2],
   valid items[-2], test items[-1]); item text = the title cut to `title_words` words (prompt cost);
2. `fusionrec train palr --nproc 2` (torchrun, 2 CPU ranks, DeepSpeed engine, LoRA on SmolLM2-135M) with
   the recipe's default retriever: rank 0 trains SASRec-CE on the training split (launch/palr_retriever.py,
   the fast Beauty setting), rank 1 waits and loads it; the Recommend + Recommend_Retrieval examples of a
   `finetune_share` of users (paper: 20%; here what fits on CPU) are fine-tuned on for one epoch;
3. `fusionrec export` of the run (LoRA merged) and the SASRec the run trained;
4. evaluation on test users: a seeded random permutation of all users is walked until `n_retrieved` users
   have their test target inside SASRec's top-50 (history items excluded, the Retriever contract). The LM
   scores only those (re-ranking cannot move a target that was not retrieved: for the others every metric
   is 0 for both orders), so the metrics over *all* walked users are the retrieved-subset metrics times
   n_retrieved / n_walked, exactly. Both sets are reported. The zero-shot SmolLM2 (no fine-tuning) re-ranks
   the first `n_zero_shot` retrieved users as a second reference.

Lines: `palr-<set>-<metric>` with ours = fine-tuned PALR, baseline = SASRec's own order on the same users,
`palr-zeroshot-retrieved-<metric>` (ours = base SmolLM2), `palr-sasrec-test-full` (SASRec over all test
users, for context: paper Table 2 SASRec HR@10 .0617), and `palr-stage-seconds`.
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

if TYPE_CHECKING:  # torch-free at import: the callback module is only named here
    from fusionrec.trainer.callbacks import HistoryCallback

os.environ.setdefault("HF_HUB_OFFLINE", "1")

METRICS = ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10")


@dataclass
class Plan:
    n_retrieved: int  # test users with the target in SASRec's top-50 that the LM re-ranks
    n_zero_shot: int  # of those, how many the zero-shot base model re-ranks
    finetune_share: float  # share of users fine-tuned on (paper: 0.2)
    sasrec_epochs: int
    max_steps: int  # cap on optimizer steps (one epoch otherwise)
    micro_batch: int = 2  # per rank; 2 ranks -> 4 examples per step
    lr: float = 5e-4
    n_targets: int = 1  # answer items per example (paper: 10); the evaluation asks for the next item
    negatives: int = 9
    title_words: int = 6
    nproc: int = 2
    seed: int = 0


# Sized on the 2-core box: re-ranking 50 candidates takes 8-12 s per user, fine-tuning ~0.3-0.8 examples/s
# over both ranks. FULL measured 20.4 min wall: SASRec 5.0, LM fine-tuning (incl. start-up) 8.0, re-ranking 7.1.
FULL = Plan(n_retrieved=40, n_zero_shot=16, finetune_share=0.005, sasrec_epochs=8, max_steps=60, lr=1e-3)
QUICK = Plan(n_retrieved=3, n_zero_shot=2, finetune_share=0.001, sasrec_epochs=1, max_steps=3)


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


def _overrides(plan: Plan, data_dir: Path, run_dir: Path) -> list[str]:
    return [
        f'palr.data_dir="{data_dir}"', 'palr.retriever="sasrec"', f"palr.retriever_epochs={plan.sasrec_epochs}",
        "palr.epochs=1", 'palr.model.name_or_path="smollm2-135m"', "palr.model.max_length=1024",
        "palr.model.lora.rank=16", "palr.model.lora.alpha=32", 'palr.model.lora.targets="all-linear"',
        f"palr.palr.finetune_share={plan.finetune_share}", f"palr.palr.negatives={plan.negatives}",
        f"palr.palr.tasks.n_targets={plan.n_targets}", f"palr.palr.seed={plan.seed}",
        f'train.run_dir="{run_dir}"', f"train.max_steps={plan.max_steps}", "train.log_every=1",
        "train.tensorboard=false", "train.progress=false", "train.deepspeed.zero_stage=0",
        f"train.deepspeed.micro_batch_size={plan.micro_batch}", f"train.optim.lr={plan.lr}",
        "train.optim.warmup_steps=5",
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

    cfg = CausalLMConfig(name_or_path=model_path)
    model, tok = build_causal_lm(cfg).eval(), load_tokenizer(cfg)
    # The instruction must read as in fine-tuning (same task config as the recipe's).
    palr = PALRConfig(top_n=50, tasks=PALRTaskConfig(n_targets=plan.n_targets))
    t0 = time.perf_counter()
    ranks = rerank_ranks(model, tok, users, text, retriever, palr)
    return ranks, time.perf_counter() - t0


def _metric_lines(name: str, summary: dict, scale: float, what: str, extra: dict) -> list[dict]:
    """One line per metric: ours = LM order, baseline = SASRec order (both times `scale`)."""
    lines = []
    for m in METRICS:
        ours, base = summary["llm"][m] * scale, summary["retriever"][m] * scale
        lines.append({"bench": f"palr-{name}-{m}", "ours": round(ours, 4), "baseline": round(base, 4),
                      "ratio": round(ours / base, 3) if base else None, "unit": f"{m.upper()} ({what})", **extra})  # fmt: skip
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
    return {"steps": summary.get("step"), "finetune_users": max(1, int(n_users * plan.finetune_share)),
            "first_log": logs[0] if logs else None, "last_log": logs[-1] if logs else None,
            "loss_curve": loss_curve([log["palr/loss"] for log in logs])}  # fmt: skip


def run(quick: bool = False) -> list[dict]:
    from fusionrec.cluster.baselines import load_sasrec
    from fusionrec.launch.export import export_checkpoint
    from fusionrec.launch.palr_retriever import RETRIEVER_DIR
    from fusionrec.trainer.recipes.palr.rerank import SASRecRetriever, rank_summary

    plan, beauty = (QUICK if quick else FULL), _beauty()
    if beauty is None:
        return [{"bench": "palr", "skipped": "../shared/data/amazon_beauty not found"}]
    sec: dict[str, float] = {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="palr-bench-") as tmp:
        tmp, t0 = Path(tmp), time.perf_counter()
        sequences, text = write_processed(beauty, tmp / "beauty", plan.title_words)
        sec["data"] = time.perf_counter() - t0
        sec["train_cli_total"] = finetune(plan, tmp / "beauty", tmp / "run")
        sasrec = json.loads((tmp / "run" / RETRIEVER_DIR.parent / "sasrec.train.json").read_text())
        sec["sasrec_train_in_rank0"] = sasrec["seconds"]
        t0 = time.perf_counter()
        ranker = export_checkpoint(tmp / "run", tmp / "export")["ranker"]
        sec["export"] = time.perf_counter() - t0
        retriever = SASRecRetriever(*load_sasrec(tmp / "run" / RETRIEVER_DIR))
        t0 = time.perf_counter()
        full, walk = sasrec_full_test(sequences, retriever), walk_users(sequences, retriever, plan)
        sec["sasrec_eval"] = time.perf_counter() - t0
        ft, sec["rerank_finetuned"] = rerank(str(ranker), walk["retrieved"], text, retriever, plan)
        zs_users = walk["retrieved"][: plan.n_zero_shot]
        zs, sec["rerank_zeroshot"] = rerank("smollm2-135m", zs_users, text, retriever, plan)
        facts = _train_facts(tmp / "run", len(sequences), plan)
    n_ret, n_all = len(ft), walk["walked"]
    ctx = {"quick": quick, "steps": facts["steps"], "finetune_users": facts["finetune_users"]}
    ks = (1, 5, 10)
    lines = _metric_lines("retrieved", rank_summary(ft, ks), 1.0, "test users with the target in SASRec's top-50; "
                          "ours: fine-tuned SmolLM2-135M re-ranking, baseline: SASRec order", ctx | {"users": n_ret})  # fmt: skip
    lines += _metric_lines("all", rank_summary(ft, ks), n_ret / max(1, n_all), "all walked test users (random "
                           "sample); ours: fine-tuned re-ranking, baseline: SASRec order", ctx | {"users": n_all})  # fmt: skip
    zs_ctx = {
        "quick": quick,
        "users": len(zs),
        "finetuned_on_same_users": rank_summary(ft[: len(zs)], ks)["llm"],
    }
    lines += _metric_lines("zeroshot-retrieved", rank_summary(zs, ks), 1.0, "first retrieved users; ours: "
                           "zero-shot SmolLM2-135M (no fine-tuning), baseline: SASRec order", zs_ctx)  # fmt: skip
    lines.append({"bench": "palr-sasrec-test-full", "ours": round(full["HR@10"], 4), "baseline": 0.0617,
                  "ratio": round(full["HR@10"] / 0.0617, 3), "unit": "HR@10 (SASRec retriever, all test users, "
                  "history excluded; baseline: paper Table 2 SASRec)", **full, "quick": quick, "sasrec_train": sasrec})  # fmt: skip
    lines.append({"bench": "palr-stage-seconds", "ours": round(time.perf_counter() - t_start, 1), "unit": "s (wall, "
                  "whole benchmark; train_cli_total includes sasrec_train_in_rank0)", **{k: round(v, 1) for k, v in sec.items()},
                  "per_user_rerank_s": round(sec["rerank_finetuned"] / max(1, n_ret), 2), "load_avg_1m":
                  round(os.getloadavg()[0], 2), "quick": quick, "plan": asdict(plan), **facts})  # fmt: skip
    return lines


def main() -> None:
    for line in run(quick="--quick" in sys.argv):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
