"""Elastic resume: a checkpoint resumed on another world size (trainer/checkpoint.py, module docstring).

The distributed test trains a real DeepSpeed engine on real shards: saved by 2 ranks (ZeRO-2 and stage 0,
plain ShardLoader) and resumed by 1; saved by 1 (ZeRO-3, length-bucketed loader, mid-window) and resumed
by 2.
It checks every training sample of the epoch is trained exactly once in total, and that weights, Adam
moments and the LR right after the load equal the saved ones. The unit tests cover the state merging.
"""

from __future__ import annotations

import collections
import hashlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fusionrec.data_pipeline.loader import LoaderConfig, ShardDataset, collate_samples
from fusionrec.trainer.bucketing import BucketedLoader, elastic_state
from fusionrec.trainer.callbacks import Callback
from fusionrec.trainer.checkpoint import merge_loader_states, reseed
from fusionrec.trainer.module_base import BatchStats, Phase
from fusionrec.trainer.recipes.toy.module import ToyModule
from fusionrec.trainer.testing import run_distributed_test
from test_loader import make_samples, write_corpus

BATCH = 4


def _features(key: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(int(hashlib.sha256(key.encode()).hexdigest()[:8], 16))
    x = torch.randn(16, generator=g)
    return x, torch.tanh(x[:4])


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """x, y from each sample's key; ``real`` masks the loader's padding copies out of the loss."""
    xs, ys = zip(*(_features(s["__key__"]) for s in samples), strict=True)
    return {
        "x": torch.stack(xs),
        "y": torch.stack(ys),
        "real": torch.tensor([0.0 if s["_pad"] else 1.0 for s in samples]),
        "keys": [s["__key__"] for s in samples if not s["_pad"]],
    }


class KeyedRegression(ToyModule):
    """ToyModule's regressor over corpus samples; one phase = one epoch; remembers every key it trained."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str] = []

    def plan(self, max_steps: int) -> list[Phase]:
        return [Phase(name="train", engine="model", epochs=1)]

    def train_batch(self, batch: Mapping[str, Any], phase: Phase) -> dict[str, torch.Tensor]:
        self.keys += batch["keys"]
        err = (self.predict(batch["x"]) - batch["y"]).pow(2).mean(dim=1)
        return {"loss": (err * batch["real"]).sum() / batch["real"].sum().clamp(min=1.0)}

    def batch_stats(self, batch: Mapping[str, Any]) -> BatchStats:
        return BatchStats(samples=len(batch["keys"]))


class Snapshot(Callback):
    """Full weights, Adam moments and LR: right after the restore (phase start) and at the end of fit."""

    def __init__(self) -> None:
        self.at: dict[str, dict[str, Any]] = {}

    def _take(self, trainer: Any, when: str) -> None:
        strategy, engine = trainer.strategy, trainer.engines["model"]
        numpy = lambda tensors: {k: t.float().numpy() for k, t in tensors.items()}  # noqa: E731 - not shared memory
        self.at[when] = {
            "weights": numpy(strategy.full_state_dict(engine)),
            "exp_avg": numpy(strategy.full_optimizer_state(engine, "exp_avg")),
            "exp_avg_sq": numpy(strategy.full_optimizer_state(engine, "exp_avg_sq")),
            "lr": engine.lr,
            "step": trainer.state.step,
        }

    def on_phase_start(self, trainer: Any, phase: Phase) -> None:
        if trainer.state.step:  # resumed (a fresh ZeRO optimizer holds no state before its first step)
            self._take(trainer, "start")

    def on_fit_end(self, trainer: Any) -> None:
        self._take(trainer, "end")


def _fit(corpus: str, run_dir: str, stage: int, max_steps: int, resume: str | None, window: int) -> dict:
    from fusionrec.trainer.callbacks import CheckpointCallback
    from fusionrec.trainer.config import CheckpointConfig, DeepSpeedConfig, OptimConfig, TrainConfig
    from fusionrec.trainer.loop import Trainer
    from fusionrec.trainer.strategy import DeepspeedStrategy

    ds = DeepSpeedConfig(zero_stage=stage, micro_batch_size=BATCH)
    cfg = TrainConfig(
        run_dir=run_dir,
        max_steps=max_steps,
        log_every=1,
        tensorboard=False,
        progress=False,
        deepspeed=ds,
        optim=OptimConfig(lr=1e-2, warmup_steps=2, total_steps=40),
        checkpoint=CheckpointConfig(resume=resume, save_at_end=resume is None),
    )
    strategy = DeepspeedStrategy(ds)
    strategy.setup()
    data = ShardDataset(
        corpus, LoaderConfig(batch_size=BATCH), rank=strategy.rank, world_size=strategy.world_size
    )
    loader: Any = BucketedLoader(data, collate, lambda s: len(s["history"]), window) if window else None
    if loader is None:
        from fusionrec.data_pipeline.loader import ShardLoader

        loader = ShardLoader(data, collate)
    module, snap = KeyedRegression(), Snapshot()
    Trainer(cfg, strategy, module, loader, [CheckpointCallback(), snap]).fit()
    return {"keys": module.keys, "at": snap.at}


def _run(corpus: str, root: str, stage: int, steps: int, resume: bool, window: int, subdir: str = "") -> dict:
    root = f"{root}/{subdir}" if subdir else root
    ckpt = f"{root}/save/checkpoints/step-{steps}" if resume else None
    return _fit(
        corpus, f"{root}/{'resume' if resume else 'save'}", stage, 10_000 if resume else steps, ckpt, window
    )


def _assert_same_state(saved: dict, loaded: dict) -> None:
    assert loaded["step"] == saved["step"]
    assert loaded["lr"] == pytest.approx(saved["lr"], rel=1e-12)
    for part in ("weights", "exp_avg", "exp_avg_sq"):
        assert sorted(loaded[part]) == sorted(saved[part]) and saved[part]
        for name, array in saved[part].items():
            assert np.array_equal(loaded[part][name], array), (part, name)
    assert any(abs(a).max() > 0 for a in saved["exp_avg"].values())  # a trained optimizer, not zeros


def _check(saved: list[dict], resumed: list[dict], steps: int, corpus: Path) -> None:
    _assert_same_state(saved[0]["at"]["end"], resumed[0]["at"]["start"])
    # Every training sample of the epoch trained exactly once over both runs and all ranks.
    seen = collections.Counter(k for r in saved + resumed for k in r["keys"])
    train = ShardDataset(corpus, LoaderConfig()).order_keys()
    assert seen == collections.Counter(train)
    trained_first = sum(len(r["keys"]) for r in saved)
    assert trained_first == steps * BATCH * len(saved)  # no padding yet: the save was mid-epoch
    per_rank = math.ceil((len(train) - trained_first) / len(resumed))
    assert resumed[0]["at"]["end"]["step"] == steps + math.ceil(per_rank / BATCH)


def _on_two_ranks(corpus: str, root: str) -> dict:
    """Save A (ZeRO-2) and C (stage 0) for their resume on 1 rank."""
    return {
        "a": _run(corpus, root, stage=2, steps=3, resume=False, window=0, subdir="a"),
        "c": _run(corpus, root, stage=0, steps=2, resume=False, window=0, subdir="c"),
    }


def _on_one_rank(corpus: str, root: str) -> dict:
    """Resume A and C (saved by 2 ranks) on 1; save B (ZeRO-3, bucketed, mid-window) for its resume on 2."""
    return {
        "a": _run(corpus, root, stage=2, steps=3, resume=True, window=0, subdir="a"),
        "c": _run(corpus, root, stage=0, steps=2, resume=True, window=0, subdir="c"),
        "b": _run(corpus, root, stage=3, steps=4, resume=False, window=3, subdir="b"),
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    samples = make_samples({"beauty": 12, "toys": 8})
    return write_corpus(tmp_path_factory.mktemp("corpus"), samples, [40, len(samples) - 40])


@pytest.mark.distributed
def test_zero2_and_stage0_shrink_2_to_1_zero3_bucketed_grows_1_to_2(corpus: Path, tmp_path: Path) -> None:
    kw = {"corpus": str(corpus), "root": str(tmp_path)}
    two = run_distributed_test(_on_two_ranks, world_size=2, **kw)
    one = run_distributed_test(_on_one_rank, world_size=1, **kw)
    b_resumed = run_distributed_test(
        _run, world_size=2, **kw, subdir="b", stage=3, steps=4, resume=True, window=3
    )
    _check([r["a"] for r in two], [one[0]["a"]], steps=3, corpus=corpus)
    _check([r["c"] for r in two], [one[0]["c"]], steps=2, corpus=corpus)
    _check([one[0]["b"]], b_resumed, steps=4, corpus=corpus)  # 4 = one batch into the second window
    assert not list(tmp_path.glob("*/resume/checkpoints/.reshard-*"))  # universal scratch deleted


# ---------------------------------------------------------------------------------------- unit
@pytest.mark.unit
def test_bucketed_state_saved_mid_window_resumes_exactly_once_on_two_ranks(corpus: Path) -> None:
    one = BucketedLoader(ShardDataset(corpus, LoaderConfig(batch_size=BATCH)), collate_samples, len, window=3)
    it = iter(one)
    first = [s["__key__"] for _ in range(4) for s in next(it) if not s["_pad"]]  # 1 batch into window 2
    state = one.state_dict()
    assert state["taken"] == 1 and "committed" in state
    rest = []
    for rank in (0, 1):
        ds = ShardDataset(corpus, LoaderConfig(batch_size=BATCH), rank=rank, world_size=2)
        loader = BucketedLoader(ds, collate_samples, len, window=3)
        loader.load_state_dict(elastic_state([state]))
        rest += [s["__key__"] for b in loader for s in b if not s["_pad"]]
    train = ShardDataset(corpus, LoaderConfig()).order_keys()
    assert len(first) == 4 * BATCH
    assert collections.Counter(first + rest) == collections.Counter(train)
    with pytest.raises(ValueError, match="without the handed-out samples"):
        elastic_state([{k: v for k, v in state.items() if k != "committed"}])


@pytest.mark.unit
def test_loader_states_merge_or_are_refused() -> None:
    assert merge_loader_states([None, None]) is None
    assert merge_loader_states([{"epoch": 2}, {"epoch": 2}]) == {"epoch": 2}  # llm EpochBatches
    with pytest.raises(ValueError, match="cannot be re-split"):
        merge_loader_states([{"epoch": 2}, {"epoch": 3}])
    toy = {"epoch": 0, "cursor": 3, "seed": 0, "world": 2}  # ToyBatches: a per-rank cursor
    with pytest.raises(ValueError, match=r"keys \['cursor', 'epoch', 'seed', 'world'\].*cannot be re-split"):
        merge_loader_states([toy, dict(toy)])


@pytest.mark.unit
def test_reseed_is_a_function_of_seed_step_and_rank() -> None:
    draws = {}
    for args in [(0, 3, 0), (0, 3, 1), (0, 4, 0), (0, 3, 0)]:
        reseed(*args)
        draws.setdefault(args, []).append(torch.rand(3).tolist())
    assert draws[(0, 3, 0)][0] == draws[(0, 3, 0)][1]
    assert len({str(v[0]) for v in draws.values()}) == 3
