"""`fusionrec bench sasrec`: SASRec trained in-project on Amazon Beauty, full ranking over all 12,101 items,
all 22,363 test users (leave-one-out), history items not masked (the generative models' protocol).

For each loss (CE = full-softmax cross-entropy, the default; BCE = the paper's one sampled negative) one
line per metric: ours vs the paper's SASRec row (IDGenRec Table 4: HR@10 0.0605, NDCG@10 0.0318), with the
training wall/CPU time, epochs and the load average (the machine is shared: wall time alone misleads);
plus HR@10 with history masked (the RecBole-style protocol) for reference. The best epoch is chosen on the
validation target (items[-2]), never on the test target.

Settings: the default is the fast one (lr 3e-3, batch 512: a few minutes of training per loss on an idle
2-core machine); `--long` (or FUSIONREC_BENCH_LONG=1 through `fusionrec bench sasrec`) runs the original
long schedule (lr 1e-3, batch 256, up to 20 CE / 60 BCE epochs with early stopping); `--quick` is a smoke
run of 2 / 4 epochs that does not reach the paper row.

    python -m fusionrec.bench.sasrec [--long | --quick]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from fusionrec.bench import find_shared

PAPER = {"HR@10": 0.0605, "NDCG@10": 0.0318}

# loss -> SASRecTrainConfig overrides. Validation every 2 epochs keeps the best state (early stopping).
FAST = {
    "ce": {"lr": 3e-3, "batch_size": 512, "epochs": 8, "eval_every": 2, "patience": 2},
    "bce": {"lr": 3e-3, "batch_size": 512, "epochs": 16, "eval_every": 2, "patience": 2},
}
LONG = {
    "ce": {"lr": 1e-3, "batch_size": 256, "epochs": 20, "eval_every": 2, "patience": 3},
    "bce": {"lr": 1e-3, "batch_size": 256, "epochs": 60, "eval_every": 2, "patience": 3},
}
QUICK = {
    "ce": {**FAST["ce"], "epochs": 2, "eval_every": 1},
    "bce": {**FAST["bce"], "epochs": 4},
}


def _beauty() -> Path | None:
    found = find_shared("data/amazon_beauty/user_sequence.txt")
    return found.parent if found else None


def _settings(quick: bool, long: bool) -> tuple[str, dict[str, dict]]:
    if quick and long:
        raise ValueError("bench sasrec: --quick and --long are exclusive")
    long = long or os.environ.get("FUSIONREC_BENCH_LONG", "") not in ("", "0")
    return ("quick", QUICK) if quick else ("long", LONG) if long else ("fast", FAST)


def run(quick: bool = False, long: bool = False) -> list[dict]:
    from fusionrec.cluster.baselines import (
        SASRecScorer,
        SASRecTrainConfig,
        evaluate_in_process,
        load_corpus,
        train_sasrec,
        train_sequences,
    )
    from fusionrec.cluster.evaluator import EvalSet

    mode, settings = _settings(quick, long)
    beauty = _beauty()
    if beauty is None:
        return [{"bench": "sasrec", "skipped": "../shared/data/amazon_beauty not found"}]
    seqs, items, name = load_corpus(beauty)
    train = train_sequences(seqs, items)
    valid = EvalSet.from_sequences(seqs, "valid", name, items)
    test = EvalSet.from_sequences(seqs, "test", name, items)
    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    lines = []
    for loss, overrides in settings.items():
        cfg = SASRecTrainConfig(loss=loss, threads=threads, **overrides)
        cpu0 = time.process_time()
        model, hist = train_sasrec(train, len(items), cfg, valid, log=lambda s: None)
        train_cpu = time.process_time() - cpu0
        m = evaluate_in_process(SASRecScorer(model, 20), test, (10,)).to_dict()
        masked = evaluate_in_process(SASRecScorer(model, 20, exclude_history=True), test, (10,)).to_dict()
        extra = {
            "loss": loss, "mode": mode, "lr": cfg.lr, "batch_size": cfg.batch_size, "users": int(m["count"]),
            "train_s": round(hist["seconds"], 1), "train_cpu_s": round(train_cpu, 1),
            "load_avg_1m": round(os.getloadavg()[0], 2), "epochs": len(hist["epochs"]),
            "threads": threads, "history_masked_HR@10": round(masked["HR@10"], 4),
        }  # fmt: skip
        for metric, paper in PAPER.items():
            lines.append({
                "bench": f"sasrec_{loss}_{metric.lower().replace('@', '')}", "ours": round(m[metric], 4),
                "baseline": paper, "ratio": round(m[metric] / paper, 3), "unit": f"{metric} (baseline: paper row)",
                "match": bool(m[metric] >= paper), **extra,
            })  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="smoke run: 2 CE / 4 BCE epochs")
    group.add_argument("--long", action="store_true", help="the long schedule (lr 1e-3, batch 256)")
    args = parser.parse_args()
    for line in run(quick=args.quick, long=args.long):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
