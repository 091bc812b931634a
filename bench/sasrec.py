"""`fusionrec bench sasrec`: SASRec trained in-project on Amazon Beauty, full ranking over all 12,101 items,
all 22,363 test users (leave-one-out), history items not masked (the generative models' protocol).

For each loss (CE = full-softmax cross-entropy, the default; BCE = the paper's one sampled negative) one
line per metric: ours vs the paper's SASRec row (IDGenRec Table 4: HR@10 0.0605, NDCG@10 0.0318), with the
training time and epochs; plus HR@10 with history masked (the RecBole-style protocol) for reference.
The best epoch is chosen on the validation target (items[-2]), never on the test target.
"""

from __future__ import annotations

import os
from pathlib import Path

PAPER = {"HR@10": 0.0605, "NDCG@10": 0.0318}


def _beauty() -> Path | None:
    for cand in (
        os.environ.get("FUSIONREC_SHARED_DIR"),
        Path(__file__).resolve().parents[2] / "shared",
        "/work/shared",
    ):
        if cand and (Path(cand) / "data" / "amazon_beauty" / "user_sequence.txt").exists():
            return Path(cand) / "data" / "amazon_beauty"
    return None


def run(quick: bool = False) -> list[dict]:
    from fusionrec.cluster.baselines import (
        SASRecScorer,
        SASRecTrainConfig,
        evaluate_in_process,
        load_corpus,
        train_sasrec,
        train_sequences,
    )
    from fusionrec.cluster.evaluator import EvalSet

    beauty = _beauty()
    if beauty is None:
        return [{"bench": "sasrec", "skipped": "../shared/data/amazon_beauty not found"}]
    seqs, items, name = load_corpus(beauty)
    train = train_sequences(seqs, items)
    valid = EvalSet.from_sequences(seqs, "valid", name, items)
    test = EvalSet.from_sequences(seqs, "test", name, items)
    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    lines = []
    for loss, epochs in (("ce", 4 if quick else 20), ("bce", 8 if quick else 60)):
        cfg = SASRecTrainConfig(
            loss=loss, epochs=epochs, batch_size=256, eval_every=2, patience=3, threads=threads
        )
        model, hist = train_sasrec(train, len(items), cfg, valid, log=lambda s: None)
        m = evaluate_in_process(SASRecScorer(model, 20), test, (10,)).to_dict()
        masked = evaluate_in_process(SASRecScorer(model, 20, exclude_history=True), test, (10,)).to_dict()
        extra = {
            "loss": loss, "users": int(m["count"]), "train_s": round(hist["seconds"], 1),
            "epochs": len(hist["epochs"]), "threads": threads, "history_masked_HR@10": round(masked["HR@10"], 4),
        }  # fmt: skip
        for metric, paper in PAPER.items():
            lines.append({
                "bench": f"sasrec_{loss}_{metric.lower().replace('@', '')}", "ours": round(m[metric], 4),
                "baseline": paper, "ratio": round(m[metric] / paper, 3), "unit": f"{metric} (baseline: paper row)",
                **extra,
            })  # fmt: skip
    return lines
