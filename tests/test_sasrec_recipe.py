"""`fusionrec train sasrec`: SASRec through the generic Trainer (DeepSpeed, checkpoints, resume, validation).

Pinned losses on a tiny synthetic dataset, resume == uninterrupted, the Trainer's validation HR/NDCG@10 equal
to the Ray evaluator's in-process scorer on the checkpoint (cluster/ only scores), and the recipe's loader
dealing every batch of an epoch exactly once over two ranks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fusionrec.trainer.testing import run_distributed_test

# First 4 training losses (CE, micro-batch 32, lr 3e-3, seed 0) on the synthetic corpus below, 1 CPU rank.
PINNED = [5.21084, 4.95667, 4.83369, 4.67688]


def make_sasrec_corpus(base: Path) -> Path:
    """A synthetic Beauty category (300 users, 150 items) prepared by the local shard writer."""
    from fusionrec.data_pipeline.config import DataConfig, DatasetSpec, ShardConfig
    from fusionrec.data_pipeline.prepare import prepare
    from fusionrec.data_pipeline.synth import synth

    synth(base / "raw", categories=("Beauty",), users_per_category=300, items_per_category=150, yelp=False)
    cfg = DataConfig(datasets=[DatasetSpec("beauty", "amazon2014", str(base / "raw"), "Beauty")],
                     shards=ShardConfig(engine="local", samples_per_shard=2000))  # fmt: skip
    prepare(cfg, base / "corpus")
    return base / "corpus"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_sasrec_corpus(tmp_path_factory.mktemp("sasrec"))


def _fit(
    corpus: str, run_dir: str, steps: int, resume: str | None = None, extra: tuple[str, ...] = (), **sasrec
) -> dict:
    from fusionrec.launch.config import load_config
    from fusionrec.launch.train import run_worker

    overrides = [f"corpus={corpus}", f"train.run_dir={run_dir}", f"train.max_steps={steps}", "train.log_every=1",
                 "train.progress=false", "train.tensorboard=false", "train.deepspeed.micro_batch_size=32",
                 "train.checkpoint.every_steps=2", *(f"sasrec.{k}={v}" for k, v in sasrec.items()), *extra]  # fmt: skip
    if resume:
        overrides.append(f"train.checkpoint.resume={resume}")
    summary = run_worker("sasrec", load_config("sasrec_tiny", overrides))
    return {"losses": [log["train/loss"] for log in summary["logs"] if "train/loss" in log],
            "val": [log for log in summary["logs"] if "val/HR@10" in log], "step": summary["step"]}  # fmt: skip


@pytest.mark.distributed
def test_pinned_losses_resume_and_validation_equal_the_scorer(corpus, tmp_path):
    full = run_distributed_test(
        _fit, world_size=1, corpus=str(corpus), run_dir=str(tmp_path / "full"), steps=6
    )[0]
    assert full["losses"][:4] == pytest.approx(PINNED, abs=1e-4)
    assert full["losses"][-1] < full["losses"][0]
    first = run_distributed_test(
        _fit, world_size=1, corpus=str(corpus), run_dir=str(tmp_path / "split"), steps=3
    )[0]
    rest = run_distributed_test(_fit, world_size=1, corpus=str(corpus), run_dir=str(tmp_path / "split"), steps=6,
                                resume="auto")[0]  # fmt: skip
    assert len(rest["losses"]) == 3 and rest["step"] == 6  # it went on from step 3, not from scratch
    assert first["losses"] + rest["losses"] == pytest.approx(full["losses"], abs=1e-6, rel=0)

    # The checkpoint scored by cluster/ (the evaluator's in-process reference) = the Trainer's validation.
    from fusionrec.cluster.baselines import SASRecScorer, evaluate_in_process, load_corpus, load_sasrec
    from fusionrec.cluster.evaluator import EvalSet

    model, items = load_sasrec(tmp_path / "full" / "checkpoints" / "step-6")
    seqs, vocab, name = load_corpus(corpus / "processed" / "beauty")
    assert items == vocab
    valid = EvalSet.from_sequences(seqs, "valid", name, vocab)
    metrics = evaluate_in_process(SASRecScorer(model, 10), valid, (10,)).to_dict()
    (val,) = full["val"]
    assert val["val/count"] == len(valid)
    assert val["val/HR@10"] == pytest.approx(metrics["HR@10"], abs=1e-9)
    assert val["val/NDCG@10"] == pytest.approx(metrics["NDCG@10"], abs=1e-6)


@pytest.mark.unit
def test_two_ranks_get_every_batch_of_an_epoch_once():
    from fusionrec.trainer.recipes.sasrec.data import SequenceBatches

    rng = np.random.default_rng(0)
    train = [rng.integers(0, 50, size=rng.integers(2, 12)) for _ in range(203)]
    seen = []
    for rank in (0, 1):
        loader = SequenceBatches(train, 50, 16, 20, rank, 2, seed=3)
        assert len(loader) == 6  # 13 batches of <= 16 users, 12 usable by two ranks
        seen += [tuple(map(tuple, b["inp"].tolist())) for b in loader]
    assert len(seen) == 12 and len(set(seen)) == 12
