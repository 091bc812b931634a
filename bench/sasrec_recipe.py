"""`fusionrec bench sasrec_recipe`: SASRec through the Trainer recipe vs the in-process loop, one run.

Real Amazon Beauty (../shared/data/amazon_beauty), the same model, loss (CE), epochs, batch, lr and Adam betas;
the recipe runs 1 DeepSpeed rank at ZeRO-0 (fp32, torch Adam) with its resumable loader, the loop is
cluster.baselines.train_sasrec. Both keep their last state (no early stopping: the comparison is of the
training paths). Every test user is ranked against all 12,101 items (history not masked); HR@10 carries a
95% bootstrap interval over users (1,000 resamples), and the paired difference its own interval. Training
wall time excludes loading data and the final test ranking; the recipe's end-of-run validation uses
`sasrec.val_users` users (reported).

    python -m fusionrec.bench.sasrec_recipe [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from fusionrec.bench import find_shared, provenance

EPOCHS, QUICK_EPOCHS, BATCH, LR, VAL_USERS, RESAMPLES = 6, 1, 512, 3e-3, 1000, 1000


def _beauty() -> Path | None:
    found = find_shared("data/amazon_beauty/user_sequence.txt")
    return found.parent if found else None


def _hits(model, test, k: int = 10) -> np.ndarray:
    """Per-user HR@k (0/1) over every test user, all items ranked."""
    from fusionrec.cluster.baselines import SASRecScorer
    from fusionrec.cluster.evaluator import UserBatch

    scorer, out = SASRecScorer(model, k), []
    for lo in range(0, len(test), 1024):
        hi = min(len(test), lo + 1024)
        top = scorer.rank(UserBatch(test.user_ids[lo:hi], [test.history(i) for i in range(lo, hi)]))
        out.append((top == test.targets[lo:hi, None]).any(axis=1))
    return np.concatenate(out).astype(np.float64)


def _ci(values: np.ndarray, rng: np.random.Generator) -> list[float]:
    idx = rng.integers(0, len(values), size=(RESAMPLES, len(values)))
    means = values[idx].mean(axis=1)
    return [round(float(np.quantile(means, 0.025)), 5), round(float(np.quantile(means, 0.975)), 5)]


def _loop(beauty: Path, epochs: int):
    from fusionrec.cluster.baselines import SASRecTrainConfig, load_corpus, train_sasrec, train_sequences

    seqs, items, _ = load_corpus(beauty)
    cfg = SASRecTrainConfig(loss="ce", epochs=epochs, batch_size=BATCH, lr=LR, eval_every=0,
                            threads=int(os.environ.get("OMP_NUM_THREADS", "2")))  # fmt: skip
    t0 = time.perf_counter()
    model, _ = train_sasrec(train_sequences(seqs, items), len(items), cfg, log=lambda _: None)
    return model, time.perf_counter() - t0


def _recipe(beauty: Path, epochs: int, run_dir: Path):
    from fusionrec.launch.config import load_config
    from fusionrec.launch.train import run_worker
    from fusionrec.trainer.checkpoint_reader import list_checkpoints
    from fusionrec.trainer.recipes.sasrec.artefacts import load_sasrec_checkpoint

    overrides = [f"sasrec.data={beauty}", f"train.run_dir={run_dir}", f"sasrec.epochs={epochs}",
                 f"sasrec.val_users={VAL_USERS}", f"train.deepspeed.micro_batch_size={BATCH}",
                 f"train.optim.lr={LR}", "train.progress=false", "train.tensorboard=false",
                 "train.checkpoint.every_steps=0"]  # fmt: skip
    t0 = time.perf_counter()
    summary = run_worker("sasrec", load_config("sasrec_tiny", overrides))
    seconds = time.perf_counter() - t0
    model, _ = load_sasrec_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1][1])
    return model, seconds, summary


def run(quick: bool = False) -> list[dict]:
    from fusionrec.cluster.baselines import load_corpus
    from fusionrec.cluster.evaluator import EvalSet

    beauty = _beauty()
    if beauty is None:
        return [{"bench": "sasrec_recipe", "skipped": "../shared/data/amazon_beauty not found"}]
    epochs = QUICK_EPOCHS if quick else EPOCHS
    seqs, items, name = load_corpus(beauty)
    test = EvalSet.from_sequences(seqs, "test", name, items)
    loop_model, loop_s = _loop(beauty, epochs)
    with tempfile.TemporaryDirectory(prefix="fusionrec-bench-sasrec-") as tmp:
        rec_model, rec_s, summary = _recipe(beauty, epochs, Path(tmp) / "run")
    rng = np.random.default_rng(0)
    loop_hits, rec_hits = _hits(loop_model, test), _hits(rec_model, test)
    meta = _meta(epochs, len(test))
    lines = [
        {**meta, "model": "loop (cluster.baselines.train_sasrec)", "HR@10": round(loop_hits.mean(), 5),
         "ci95": _ci(loop_hits, rng), "train_s": round(loop_s, 1)},
        {**meta, "model": "trainer (fusionrec train sasrec)", "HR@10": round(rec_hits.mean(), 5),
         "ci95": _ci(rec_hits, rng), "train_s": round(rec_s, 1), "steps": summary["step"],
         "val_users": VAL_USERS},
    ]  # fmt: skip
    diff = rec_hits - loop_hits
    lines.append({**meta, "ours": lines[1]["HR@10"], "baseline": lines[0]["HR@10"], "unit": "HR@10",
                  "ratio": round(lines[1]["HR@10"] / max(lines[0]["HR@10"], 1e-12), 4),
                  "diff_ci95": _ci(diff, rng), "wall_ratio": round(rec_s / loop_s, 3),
                  "intervals_overlap": lines[0]["ci95"][0] <= lines[1]["ci95"][1] and lines[1]["ci95"][0] <= lines[0]["ci95"][1],
                  "wall_within_10pct": abs(rec_s / loop_s - 1) <= 0.10})  # fmt: skip
    return lines


def _meta(epochs: int, users: int) -> dict:
    return {"bench": "sasrec_recipe", "data": "amazon_beauty", "users": users, "epochs": epochs, "batch": BATCH,
            "lr": LR, "loss": "ce", **provenance()}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    for line in run(p.parse_args().quick):
        print(json.dumps(line))


if __name__ == "__main__":
    main()
