"""`fusionrec bench eval`: evaluator throughput (users/s) on Amazon Beauty's test users.

Lines:
- eval_sasrec_scaling: 2 actors vs 1 actor (ratio = scaling; goal >= 1.8x on 2 cores); `match` = the two
  runs' metrics are bit-identical.
- eval_sasrec_actor_overhead: 1 actor vs the same scorer in one in-process loop (what Ray costs per user);
  `match` = identical metrics.
users/s counts the time after the actors loaded their scorer (load time is reported beside it).

The scorer is SASRec (compact config, d 64, 2 blocks) with its initial weights: full-ranking cost does not
depend on the weights, and training it takes minutes (bench/sasrec.py measures quality). The generative
scorer (tiny T5, beam 20) plugs into the same harness once its checkpoint loader exists.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from fusionrec.bench import find_shared


def _beauty() -> Path | None:
    found = find_shared("data/amazon_beauty/user_sequence.txt")
    return found.parent if found else None


def run(quick: bool = False) -> list[dict]:
    import torch
    from fusionrec.cluster.baselines import (
        SASRecFactory,
        SASRecTrainConfig,
        evaluate_in_process,
        load_corpus,
        save_sasrec,
    )
    from fusionrec.cluster.evaluator import EvalSet, EvaluatorConfig, evaluate
    from fusionrec.cluster.ray_local import RayConfig, ray_session
    from fusionrec.trainer.models.sasrec import SASRec

    beauty = _beauty()
    if beauty is None:
        return [{"bench": "eval", "skipped": "../shared/data/amazon_beauty not found"}]
    seqs, items, name = load_corpus(beauty)
    data = EvalSet.from_sequences(seqs, "test", name, items)
    if quick:
        data = _head(data, 4000)
    torch.manual_seed(0)
    model = SASRec(SASRecTrainConfig().model_config(len(items)))
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_sasrec(Path(tmp) / "sasrec", model, items)
        factory = SASRecFactory(str(ckpt), top_k=20, threads=1)
        with ray_session(RayConfig(num_cpus=2)):
            runs = {
                n: evaluate(data, factory, EvaluatorConfig(num_actors=n, unit_size=512, progress=False))
                for n in (1, 2)
            }
        torch.set_num_threads(1)
        scorer = factory()
        t0 = time.perf_counter()
        ref = evaluate_in_process(scorer, data, (5, 10, 20), batch_size=256).to_dict()
        inproc = len(data) / (time.perf_counter() - t0)
    one, two = runs[1], runs[2]
    note = (
        f"{len(data)} {'(first 4000, --quick) ' if quick else 'all '}Beauty test users, SASRec d64x2, top-20"
    )
    return [
        _line("eval_sasrec_scaling", two.users_per_s, one.users_per_s, one.metrics == two.metrics, note,
              load_s={"1": round(one.load_seconds, 2), "2": round(two.load_seconds, 2)}),
        _line("eval_sasrec_actor_overhead", one.users_per_s, inproc, one.metrics == ref, note),
    ]  # fmt: skip


def _head(data, n: int):
    from fusionrec.cluster.evaluator import EvalSet

    return EvalSet(
        data.name, data.item_ids, data.user_ids[:n], data.flat[: data.offsets[n]], data.offsets[: n + 1],
        data.targets[:n],
    )  # fmt: skip


def _line(bench: str, ours: float, baseline: float, match: bool, users: str, **extra) -> dict:
    return {
        "bench": bench, "ours": round(ours, 1), "baseline": round(baseline, 1), "ratio": round(ours / baseline, 3),
        "unit": "users/s", "match": bool(match), "users": users, **extra,
    }  # fmt: skip
