"""Trainer loop on 2 real processes: phases, freezing, global-mean logging, validation, TensorBoard."""

from __future__ import annotations

import pytest
from fusionrec.trainer.module_base import BaseTrainModule, Phase
from fusionrec.trainer.testing import run_distributed_test


@pytest.mark.unit
def test_phase_validation_and_default_plan() -> None:
    with pytest.raises(ValueError, match="exactly one of steps"):
        Phase(name="p", engine="m", steps=2, epochs=1)
    with pytest.raises(ValueError, match="steps/epochs must be >= 1"):
        Phase(name="p", engine="m", epochs=0)
    assert BaseTrainModule().plan(7) == [Phase(name="train", engine="model", steps=7)]
    with pytest.raises(ValueError, match="no module state but the checkpoint holds"):
        BaseTrainModule().load_state_dict({"ids": {}})


def _loop_run(run_dir: str) -> dict:
    import torch
    from fusionrec.trainer.callbacks import (
        Callback,
        HistoryCallback,
        ProgressCallback,
        TensorBoardCallback,
        ValidationCallback,
    )
    from fusionrec.trainer.config import DeepSpeedConfig, OptimConfig, TrainConfig
    from fusionrec.trainer.loop import Trainer
    from fusionrec.trainer.recipes.toy.data import ToyBatches, make_regression
    from fusionrec.trainer.recipes.toy.module import ToyModule, weights_fingerprint
    from fusionrec.trainer.strategy import DeepspeedStrategy

    class Recording(ToyModule):
        """Keeps this rank's local micro-batch losses to check the logged global mean against."""

        local: list[float] = []

        def train_batch(self, batch, phase):
            out = super().train_batch(batch, phase)
            self.local.append(float(out["loss"].detach()))
            return out

    class PhaseProbe(Callback):
        def __init__(self) -> None:
            self.prints: list[tuple[str, dict[str, str]]] = []

        def _snap(self, trainer, tag):
            s = trainer.strategy
            self.prints.append((tag, {n: weights_fingerprint(s, {n: e}) for n, e in trainer.engines.items()}))

        def on_phase_start(self, trainer, phase):
            self._snap(trainer, f"start:{phase.name}")

        def on_phase_end(self, trainer, phase):
            self._snap(trainer, f"end:{phase.name}")

    ds = DeepSpeedConfig(zero_stage=1, micro_batch_size=8, grad_accum=2)
    cfg = TrainConfig(run_dir=run_dir, max_steps=8, log_every=1, deepspeed=ds, optim=OptimConfig(lr=1e-2))
    strategy = DeepspeedStrategy(ds)
    strategy.setup()
    x, y = make_regression(512, 16, 4, seed=0)
    vx, vy = make_regression(64, 16, 4, seed=1)
    r, w = strategy.rank, strategy.world_size
    module = Recording(two_stage=True, stage_steps=2)
    history, probe = HistoryCallback(), PhaseProbe()
    callbacks = [ValidationCallback(every=4), history, probe, TensorBoardCallback(), ProgressCallback()]
    val = ToyBatches({"x": vx, "y": vy}, 8, r, w)
    state = Trainer(
        cfg, strategy, module, ToyBatches({"x": x, "y": y}, 8, r, w), callbacks, val_loader=val
    ).fit()

    # Hand-computed validation MSE over the whole validation set, with the final full weights.
    enc = strategy.full_state_dict(module.engines["encoder"])
    head = strategy.full_state_dict(module.engines["head"])
    from fusionrec.trainer.recipes.toy.module import ToyRegressor

    ref = ToyRegressor()
    ref.encoder.load_state_dict(enc)
    ref.head.load_state_dict(head)
    with torch.no_grad():
        ref_val = (ref(vx) - vy).pow(2).mean(dim=1).mean().item()

    # Bad plan: a phase naming an engine that does not exist fails before any step.
    class BadPlan(ToyModule):
        def plan(self, max_steps):
            return [Phase(name="x", engine="nope", steps=1)]

    try:
        Trainer(cfg, strategy, BadPlan(), [], []).fit()
        bad_plan_error = None
    except ValueError as err:
        bad_plan_error = str(err)
    return {
        "logs": history.logs,
        "local": strategy.all_gather_object(module.local),
        "prints": probe.prints,
        "phase_starts": module.phase_starts,
        "ref_val": ref_val,
        "state": state.to_dict(),
        "bad_plan_error": bad_plan_error,
    }


@pytest.mark.distributed
def test_trainer_two_phase_run(tmp_path) -> None:
    r0, r1 = run_distributed_test(_loop_run, world_size=2, run_dir=str(tmp_path))
    train_logs = [
        log for log in r0["logs"] if any(k.endswith("/loss") and not k.startswith("val") for k in log)
    ]
    assert [log["step"] for log in train_logs] == list(range(1, 9))
    assert r0["logs"] == r1["logs"]  # every logged value is a global value

    # Logged loss = mean over both ranks and both accumulation micro-batches of each step.
    local0, local1 = r0["local"]
    for i, log in enumerate(train_logs):
        name = "encoder" if (i // 2) % 2 == 0 else "head"
        mine = local0[2 * i : 2 * i + 2] + local1[2 * i : 2 * i + 2]
        assert log[f"{name}/loss"] == pytest.approx(sum(mine) / 4, rel=1e-6, abs=1e-9)
        assert log[f"{name}/lr"] == pytest.approx(1e-2) and log[f"{name}/grad_norm"] > 0
        assert log["throughput/samples_per_s"] > 0
    first = train_logs[0]["encoder/loss"]
    last = train_logs[-1]["head/loss"]
    assert last < 0.8 * first, (first, last)

    # Phases alternate; each phase moves only its own engine.
    assert r0["phase_starts"] == ["encoder@0", "head@0", "encoder@1", "head@1"]
    for (tag_start, start), (tag_end, end) in zip(r0["prints"][0::2], r0["prints"][1::2], strict=True):
        moved = tag_start.split(":")[1]
        assert tag_end == f"end:{moved}"
        frozen = "head" if moved == "encoder" else "encoder"
        assert start[moved] != end[moved], f"{moved} did not change in its phase"
        assert start[frozen] == end[frozen], f"{frozen} changed while frozen"
    assert r0["prints"] == r1["prints"]  # ranks in sync at every phase boundary

    # Validation at step 4 and 8 (the end); exact global mean over all 64 validation samples.
    vals = [log for log in r0["logs"] if "val/loss" in log]
    assert [v["step"] for v in vals] == [4, 8] and all(v["val/count"] == 64 for v in vals)
    assert vals[-1]["val/loss"] == pytest.approx(r0["ref_val"], rel=1e-5)

    assert r0["state"]["step"] == 8 and r0["state"]["samples_seen"] == 8 * 2 * 2 * 8
    assert "nope" in r0["bad_plan_error"]

    # TensorBoard event files hold the logged scalars (rank 0 only).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {
        "encoder/loss",
        "head/loss",
        "encoder/lr",
        "head/grad_norm",
        "throughput/samples_per_s",
        "val/loss",
    }
    assert expected <= tags, tags
    tb = {e.step: e.value for e in acc.Scalars("head/loss")}
    for log in train_logs:
        if "head/loss" in log:
            assert tb[log["step"]] == pytest.approx(log["head/loss"], rel=1e-6)
    assert [e.step for e in acc.Scalars("val/loss")] == [4, 8]


def _uneven_run(run_dir: str) -> dict:
    """Rank 0 has 3 micro-batches per epoch, rank 1 has 5: 5 steps take two passes, rank 1's tail is skipped."""
    from fusionrec.trainer.config import DeepSpeedConfig, OptimConfig, TrainConfig
    from fusionrec.trainer.loop import Trainer
    from fusionrec.trainer.recipes.toy.data import make_regression
    from fusionrec.trainer.recipes.toy.module import ToyModule, weights_fingerprint
    from fusionrec.trainer.strategy import DeepspeedStrategy

    class Counting(ToyModule):
        def __init__(self, collective_forward: bool) -> None:
            super().__init__()
            self.collective_forward = collective_forward
            self.forwards = 0

        def train_batch(self, batch, phase):
            self.forwards += 1
            return super().train_batch(batch, phase)

    ds = DeepSpeedConfig(zero_stage=1, micro_batch_size=4)
    strategy = DeepspeedStrategy(ds)
    strategy.setup()
    x, y = make_regression(40, 16, 4)
    n = 3 if strategy.rank == 0 else 5
    batches = [{"x": x[i * 4 : i * 4 + 4], "y": y[i * 4 : i * 4 + 4]} for i in range(n)]
    out = {}
    for collective_forward in (False, True):  # overlapped check, then check-before-forward
        cfg = TrainConfig(run_dir=run_dir, max_steps=5, deepspeed=ds, optim=OptimConfig(lr=1e-2))
        cfg.checkpoint.save_at_end = False
        module = Counting(collective_forward)
        state = Trainer(cfg, strategy, module, batches, []).fit()
        out[collective_forward] = {
            "state": state.to_dict(),
            "forwards": module.forwards,
            "fingerprint": weights_fingerprint(strategy, module.engines),
        }
    return out


@pytest.mark.distributed
def test_uneven_ranks_stop_together_and_count_the_tail(tmp_path) -> None:
    r0, r1 = run_distributed_test(_uneven_run, world_size=2, run_dir=str(tmp_path))
    for key in (False, True):
        assert r0[key]["fingerprint"] == r1[key]["fingerprint"]  # same steps on both ranks, no hang
        assert r0[key]["state"]["step"] == r1[key]["state"]["step"] == 5
        assert r0[key]["state"]["skipped"] == {}
        assert r1[key]["state"]["skipped"] == {"uneven_tail_batches": 2}  # batches 4 and 5 of pass 1
        assert r0[key]["state"]["samples_seen"] == 5 * 2 * 4  # the discarded forward is not logged
        assert r0[key]["forwards"] == 5
    # Overlapped: rank 1 ran the forward of its 4th batch before learning rank 0 had none, then dropped it.
    assert r1[False]["forwards"] == 6 and r1[True]["forwards"] == 5
    assert r0[False]["fingerprint"] == r0[True]["fingerprint"]  # the dropped forward changed nothing


def _progress_run(run_dir: str) -> dict:
    from fusionrec.trainer.callbacks import ProgressCallback
    from fusionrec.trainer.config import DeepSpeedConfig, OptimConfig, TrainConfig
    from fusionrec.trainer.loop import Trainer
    from fusionrec.trainer.recipes.toy.data import ToyBatches, make_regression
    from fusionrec.trainer.recipes.toy.module import ToyModule
    from fusionrec.trainer.strategy import DeepspeedStrategy

    class EpochPlan(ToyModule):
        def plan(self, max_steps):
            return [Phase(name="a", engine="model", epochs=2), Phase(name="b", engine="model", steps=3)]

    class Recorded(ProgressCallback):
        seen: list[tuple[int | None, int]] = []

        def on_phase_start(self, trainer, phase):
            super().on_phase_start(trainer, phase)
            self.seen.append((self.bar.total, self.bar.n))

        def on_fit_end(self, trainer):
            self.seen.append((self.bar.total, self.bar.n))
            super().on_fit_end(trainer)

    ds = DeepSpeedConfig(zero_stage=0, micro_batch_size=8, grad_accum=2)
    cfg = TrainConfig(run_dir=run_dir, max_steps=100_000, deepspeed=ds, optim=OptimConfig(lr=1e-3))
    cfg.checkpoint.save_at_end = False
    strategy = DeepspeedStrategy(ds)
    strategy.setup()
    x, y = make_regression(512, 16, 4)
    bar = Recorded()
    state = Trainer(cfg, strategy, EpochPlan(), ToyBatches({"x": x, "y": y}, 8, 0, 1), [bar]).fit()
    return {"seen": bar.seen, "steps": state.step}


@pytest.mark.distributed
def test_progress_bar_counts_the_phase_plan_not_max_steps(tmp_path) -> None:
    (r0,) = run_distributed_test(_progress_run, world_size=1, run_dir=str(tmp_path))
    # 512 samples / micro 8 = 64 micro-batches = 32 steps per epoch: 2 epochs + 3 steps = 67, not 100,000.
    assert r0["steps"] == 67
    assert r0["seen"] == [(67, 0), (67, 64), (67, 67)]


def _budget_run(run_dir: str) -> dict:
    import time

    import fusionrec.trainer.loop as loop
    from fusionrec.trainer.callbacks import CheckpointCallback
    from fusionrec.trainer.config import DeepSpeedConfig, OptimConfig, TrainConfig
    from fusionrec.trainer.recipes.toy.data import ToyBatches, make_regression
    from fusionrec.trainer.recipes.toy.module import ToyModule
    from fusionrec.trainer.strategy import DeepspeedStrategy

    ds = DeepSpeedConfig(zero_stage=1, micro_batch_size=8, grad_accum=1)
    strategy = DeepspeedStrategy(ds)
    strategy.setup()
    x, y = make_regression(512, 16, 4, seed=0)
    r, w = strategy.rank, strategy.world_size
    calls = {"n": 0}

    def skewed() -> float:  # rank 1's clock: one hour passes per call; rank 0's: none
        calls["n"] += 1
        return 3600.0 * calls["n"] if r == 1 else 0.0

    out = {}
    for name, minutes, clock in (("budget", 5.0, skewed), ("resumed", 0.0, time.perf_counter)):
        loop._now = clock
        cfg = TrainConfig(run_dir=run_dir, max_steps=12, max_minutes=minutes, log_every=4, deepspeed=ds,
                          optim=OptimConfig(lr=1e-2))  # fmt: skip
        cfg.checkpoint.resume = "auto"
        data = ToyBatches({"x": x, "y": y}, 8, r, w)
        state = loop.Trainer(cfg, strategy, ToyModule(), data, [CheckpointCallback()]).fit()
        out[name] = {"step": state.step, "seconds": state.train_seconds}
    return out


@pytest.mark.distributed
def test_time_budget_stops_every_rank_at_the_same_step_and_resumes(tmp_path) -> None:
    r0, r1 = run_distributed_test(_budget_run, world_size=2, run_dir=str(tmp_path))
    # Only rank 1 is over budget (its clock); the agreed check at the first log boundary stops both, no hang.
    assert r0["budget"]["step"] == r1["budget"]["step"] == 4
    assert r0["budget"]["seconds"] == 0.0 and r1["budget"]["seconds"] >= 3600.0
    # max_minutes = 0: no budget; the resumed run finishes the 12 steps from the saved step 4.
    assert r0["resumed"]["step"] == r1["resumed"]["step"] == 12
    # The saved rank-0 seconds (0.0) plus this run's: a resumed clock continues the checkpoint's count.
    assert 0.0 < r1["resumed"]["seconds"] < 3600.0
