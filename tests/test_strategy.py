"""DeepspeedStrategy: generated DeepSpeed JSON, batch arithmetic, and real 2-process ZeRO-2/ZeRO-3 runs."""

from __future__ import annotations

import json

import pytest
from fusionrec.trainer.config import DeepSpeedConfig, OptimConfig, TrainConfig
from fusionrec.trainer.strategy import DeepspeedStrategy, build_ds_config
from fusionrec.trainer.testing import run_distributed_test


# ----------------------------------------------------------------------------- unit
@pytest.mark.unit
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_ds_config_generated_from_typed_config(stage: int) -> None:
    cfg = DeepSpeedConfig(zero_stage=stage, micro_batch_size=4, grad_accum=3, precision="bf16")
    optim = OptimConfig(lr=3e-4, betas=(0.8, 0.99), weight_decay=0.1, grad_clip=0.5)
    ds, plan = build_ds_config(cfg, optim, world_size=2, on_cpu=True)
    assert (plan.train_batch_size, ds["train_batch_size"]) == (24, 24)
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 3
    assert ds["zero_optimization"] == {"stage": stage}
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    assert ds["gradient_clipping"] == 0.5
    params = ds["optimizer"]["params"]
    assert params == {"lr": 3e-4, "betas": [0.8, 0.99], "eps": 1e-8, "weight_decay": 0.1, "torch_adam": True}


@pytest.mark.unit
def test_offload_and_frozen_engine_configs() -> None:
    cfg = DeepSpeedConfig(zero_stage=2, offload_optimizer=True)
    ds, _ = build_ds_config(cfg, OptimConfig(), world_size=1, on_cpu=True)
    assert ds["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
    assert ds["zero_force_ds_cpu_optimizer"] is False  # torch Adam allowed with offload on CPU
    gpu, _ = build_ds_config(cfg, OptimConfig(), world_size=1, on_cpu=False)
    assert gpu["optimizer"]["params"]["torch_adam"] is False and "zero_force_ds_cpu_optimizer" not in gpu
    assert "fused" not in gpu["optimizer"]["params"]  # the offloaded step runs on CPU: DeepSpeed's CPU Adam
    # on a GPU without offload: torch's fused AdamW (no JIT-built FusedAdam), unless told otherwise
    ds, _ = build_ds_config(DeepSpeedConfig(), OptimConfig(), world_size=1, on_cpu=False)
    assert ds["optimizer"]["params"]["torch_adam"] is True and ds["optimizer"]["params"]["fused"] is True
    told = DeepSpeedConfig(torch_adam=False)
    params = build_ds_config(told, OptimConfig(), world_size=1, on_cpu=False)[0]["optimizer"]["params"]
    assert params["torch_adam"] is False and "fused" not in params
    frozen, _ = build_ds_config(cfg, None, world_size=1, on_cpu=True)
    assert "optimizer" not in frozen and frozen["gradient_clipping"] == 0.0
    with pytest.raises(ValueError, match="offload_optimizer needs zero_stage >= 1"):
        DeepSpeedConfig(zero_stage=0, offload_optimizer=True)


@pytest.mark.unit
def test_inconsistent_batch_arithmetic_raises() -> None:
    cfg = DeepSpeedConfig(micro_batch_size=4, grad_accum=2, global_batch_size=32)
    assert cfg.resolve_batch(4).train_batch_size == 32
    with pytest.raises(
        ValueError, match=r"global_batch_size=32 but micro_batch_size=4 x grad_accum=2 x world_size=2 = 16"
    ):
        cfg.resolve_batch(2)
    with pytest.raises(ValueError, match="inconsistent batch arithmetic"):
        build_ds_config(cfg, OptimConfig(), world_size=3, on_cpu=True)


@pytest.mark.unit
def test_user_json_overrides_and_is_checked(tmp_path) -> None:
    cfg = DeepSpeedConfig(zero_stage=3, micro_batch_size=2)
    user = {"zero_optimization": {"stage3_param_persistence_threshold": 0}, "gradient_clipping": 2.0}
    ds, _ = build_ds_config(cfg, OptimConfig(), world_size=2, on_cpu=True, user=user)
    assert ds["zero_optimization"] == {"stage": 3, "stage3_param_persistence_threshold": 0}
    assert ds["gradient_clipping"] == 2.0
    bad = {"train_micro_batch_size_per_gpu": 3}  # 3 x 1 x 2 != the generated train_batch_size 4
    with pytest.raises(ValueError, match=r"train_batch_size=4 but train_micro_batch_size_per_gpu=3"):
        build_ds_config(cfg, OptimConfig(), world_size=2, on_cpu=True, user=bad)
    path = tmp_path / "ds.json"
    path.write_text('{"zero_optimization": {\n  "stage": 2,,\n}}')
    with pytest.raises(ValueError, match=rf"{path}:2: invalid JSON"):
        DeepspeedStrategy(DeepSpeedConfig(user_json=str(path)))
    with pytest.raises(ValueError, match="file not found"):
        DeepspeedStrategy(DeepSpeedConfig(user_json=str(tmp_path / "missing.json")))


@pytest.mark.unit
def test_fp16_refused_on_cpu() -> None:
    with pytest.raises(ValueError, match="precision='fp16' is not supported on the cpu"):
        DeepspeedStrategy(DeepSpeedConfig(precision="fp16"))


@pytest.mark.unit
def test_warmup_linear_decay_factors() -> None:
    optim = OptimConfig(lr=1.0, warmup_steps=4, total_steps=12, min_lr_ratio=0.2)
    got = [optim.lr_factor(s) for s in (0, 1, 3, 4, 8, 12, 20)]
    # warmup (s+1)/4; then 1 - 0.8 * (s-4)/8, clamped at the end
    assert got == pytest.approx([0.25, 0.5, 1.0, 1.0, 0.6, 0.2, 0.2])
    assert OptimConfig(warmup_steps=2).lr_factor(100) == 1.0  # no total_steps: constant after warmup


@pytest.mark.unit
def test_config_typos_and_bad_values() -> None:
    with pytest.raises(ValueError, match=r"unknown config key\(s\): train.deepspeed.zero_stag"):
        TrainConfig.from_dict({"deepspeed": {"zero_stag": 2}})
    with pytest.raises(ValueError, match="zero_stage must be 0, 1, 2 or 3, got 4"):
        TrainConfig.from_dict({"deepspeed": {"zero_stage": 4}})
    with pytest.raises(ValueError, match="total_steps"):
        OptimConfig(warmup_steps=10, total_steps=5)
    cfg = TrainConfig.from_dict({"max_steps": 7, "optim": {"betas": [0.9, 0.95]}})
    assert cfg.max_steps == 7 and cfg.optim.betas == (0.9, 0.95)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# ----------------------------------------------------------------------------- distributed
def _zero_run(stage: int, steps: int) -> dict:
    """Train the toy regressor with raw strategy calls; report losses, shard sizes and a weight hash."""
    import torch
    from fusionrec.trainer.recipes.toy.data import ToyBatches, make_regression
    from fusionrec.trainer.recipes.toy.module import ToyRegressor, weights_fingerprint

    user = {"zero_optimization": {"stage3_param_persistence_threshold": 0}} if stage == 3 else None
    cfg = DeepSpeedConfig(zero_stage=stage, micro_batch_size=8, user_json=None)
    strategy = DeepspeedStrategy(cfg)
    strategy._user_json = user  # same as a user JSON file, without the file
    strategy.setup()
    torch.manual_seed(0)
    engine = strategy.prepare(ToyRegressor(), OptimConfig(lr=1e-2), name="model")
    x, y = make_regression(256, 16, 4)
    loader = ToyBatches({"x": x, "y": y}, 8, strategy.rank, strategy.world_size)
    losses = []
    for step, batch in zip(range(steps), loader, strict=False):
        loss = torch.nn.functional.mse_loss(engine(batch["x"]), batch["y"])
        strategy.backward(loss, engine)
        assert strategy.step(engine)  # grad_accum=1: every micro-batch is a boundary
        losses.append(strategy.all_reduce(loss.detach()).item())
        assert engine.global_steps == step + 1
    local_numel = sum(p.numel() if stage < 3 else p.ds_tensor.numel() for p in engine.module.parameters())
    full_numel = sum(p.numel() for p in ToyRegressor().parameters())
    return {
        "losses": losses,
        "fingerprint": weights_fingerprint(strategy, {"model": engine}),
        "local_numel": local_numel,
        "full_numel": full_numel,
        "grad_norm": engine.grad_norm,
        "lr": engine.lr,
    }


@pytest.mark.distributed
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_two_processes_learn_and_stay_in_sync(stage: int) -> None:
    r0, r1 = run_distributed_test(_zero_run, world_size=2, stage=stage, steps=12)
    assert r0["fingerprint"] == r1["fingerprint"], "ranks hold different weights"
    assert r0["losses"] == r1["losses"]  # all-reduced: the same global mean on both ranks
    assert sum(r0["losses"][-3:]) / 3 < 0.6 * sum(r0["losses"][:3]) / 3, r0["losses"]
    assert r0["grad_norm"] is not None and r0["grad_norm"] > 0 and r0["lr"] == pytest.approx(1e-2)
    if stage == 3:  # parameters really are partitioned: each rank holds about half
        assert r0["local_numel"] + r1["local_numel"] >= r0["full_numel"] > r0["local_numel"]


def _accum_run(steps: int) -> dict:
    """Same data, two batch layouts: micro 1 x accum 4 and micro 4 x accum 1 (ZeRO-2, 2 ranks)."""
    import torch
    from fusionrec.trainer.recipes.toy.data import make_regression
    from fusionrec.trainer.recipes.toy.module import ToyRegressor

    x, y = make_regression(64, 16, 4)
    weights = {}
    for micro, accum in ((1, 4), (4, 1)):
        strategy = DeepspeedStrategy(DeepSpeedConfig(zero_stage=2, micro_batch_size=micro, grad_accum=accum))
        strategy.setup()
        torch.manual_seed(0)
        engine = strategy.prepare(ToyRegressor(), OptimConfig(lr=1e-2, grad_clip=0.0), name=f"m{micro}")
        for step in range(steps):
            start = (step * strategy.world_size + strategy.rank) * 4  # this rank's 4 samples of the step
            xs, ys = x[start : start + 4], y[start : start + 4]
            for i in range(accum):
                sl = slice(i * micro, (i + 1) * micro)
                strategy.backward(torch.nn.functional.mse_loss(engine(xs[sl]), ys[sl]), engine)
                stepped = strategy.step(engine)
                assert stepped == (i == accum - 1)
        weights[(micro, accum)] = strategy.full_state_dict(engine)
    a, b = weights[(1, 4)], weights[(4, 1)]
    torch.manual_seed(0)
    init = ToyRegressor().state_dict()
    return {
        "max_abs_diff": max((a[k] - b[k]).abs().max().item() for k in a),
        "moved": max((a[k] - init[k]).abs().max().item() for k in a),
    }


@pytest.mark.distributed
def test_grad_accumulation_equivalence() -> None:
    r0, r1 = run_distributed_test(_accum_run, world_size=2, steps=5)
    assert r0["moved"] > 1e-2  # the weights did train ...
    assert r0["max_abs_diff"] < 1e-5 and r1["max_abs_diff"] < 1e-5  # ... identically under both layouts


@pytest.mark.unit
def test_param_groups_and_reduce_bucket_from_the_model() -> None:
    from fusionrec.trainer.recipes.toy.module import ToyRegressor
    from fusionrec.trainer.strategy import _param_groups, _size_reduce_bucket

    model = ToyRegressor()
    params = list(model.parameters())
    ids = lambda ps: [id(p) for p in ps]  # noqa: E731
    # No weight decay: one group (ZeRO-1/2 run a norm all-reduce and an all-gather per group and step).
    (only,) = _param_groups(model, 0.0)
    assert ids(only["params"]) == ids(params) and only["weight_decay"] == 0.0
    decay, no_decay = _param_groups(model, 0.1)
    assert ids(decay["params"]) == ids(p for p in params if p.ndim == 2) and decay["weight_decay"] == 0.1
    assert (
        ids(no_decay["params"]) == ids(p for p in params if p.ndim == 1) and no_decay["weight_decay"] == 0.0
    )
    numel = sum(p.numel() for p in params)
    zero = {"stage": 1}
    _size_reduce_bucket(zero, model, 1)
    assert zero["reduce_bucket_size"] == numel == (16 * 64 + 64) + 2 * 64 + (64 * 64 + 64) + (64 * 4 + 4)
    kept = {"stage": 2, "reduce_bucket_size": 1000}  # the user's JSON wins
    _size_reduce_bucket(kept, model, 2)
    assert kept["reduce_bucket_size"] == 1000
    stage0 = {"stage": 0}
    _size_reduce_bucket(stage0, model, 0)
    assert stage0 == {"stage": 0}


def _clip_reference(x, y, steps: int, clip: float) -> tuple[dict, list[float]]:
    """One process, the union of both ranks' micro-batches per step: what data parallelism must equal."""
    import torch
    from fusionrec.trainer.recipes.toy.module import ToyRegressor

    torch.manual_seed(0)
    model = ToyRegressor()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    norms = []
    for step in range(steps):
        sl = slice(step * 8, step * 8 + 8)
        torch.nn.functional.mse_loss(model(x[sl]), y[sl]).backward()
        norms.append(
            float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip else float("inf")))
        )
        opt.step()
        opt.zero_grad()
    return model.state_dict(), norms


def _clip_run(steps: int) -> dict:
    """ZeRO-0 (the strategy clips) and ZeRO-1 (DeepSpeed clips) against one plain process, clipping active."""
    import torch
    from fusionrec.trainer.recipes.toy.data import make_regression
    from fusionrec.trainer.recipes.toy.module import ToyRegressor

    x, y = make_regression(64, 16, 4)
    out: dict = {}
    for stage in (0, 1):
        strategy = DeepspeedStrategy(DeepSpeedConfig(zero_stage=stage, micro_batch_size=4))
        strategy.setup()
        torch.manual_seed(0)
        engine = strategy.prepare(ToyRegressor(), OptimConfig(lr=1e-2, grad_clip=0.05), name=f"z{stage}")
        out[f"ds_clip{stage}"] = float(engine._ds.gradient_clipping())
        norms = []
        for step in range(steps):
            sl = slice(
                (step * strategy.world_size + strategy.rank) * 4,
                (step * strategy.world_size + strategy.rank) * 4 + 4,
            )
            strategy.backward(torch.nn.functional.mse_loss(engine(x[sl]), y[sl]), engine)
            strategy.step(engine)
            norms.append(engine.grad_norm)
        out[f"weights{stage}"] = strategy.full_state_dict(engine)
        out[f"norms{stage}"] = norms
    ref, out["ref_norms"] = _clip_reference(x, y, steps, 0.05)
    unclipped, _ = _clip_reference(x, y, steps, 0.0)

    def diff(a: dict, b: dict) -> float:
        return max((a[k] - b[k]).abs().max().item() for k in a)

    return {
        **{k: v for k, v in out.items() if not k.startswith("weights")},
        "diff0": diff(out["weights0"], ref),
        "diff1": diff(out["weights1"], ref),
        "clipping_matters": diff(unclipped, ref),
    }


@pytest.mark.distributed
def test_zero0_and_zero1_clip_like_one_process() -> None:
    r0, r1 = run_distributed_test(_clip_run, world_size=2, steps=4)
    assert min(r0["ref_norms"]) > 0.05 and r0["clipping_matters"] > 1e-3  # clipping really changes the result
    assert r0["ds_clip0"] == 0.0 and r0["ds_clip1"] == 0.05  # stage 0: the strategy clips, not DeepSpeed
    for r in (r0, r1):
        assert r["diff0"] < 1e-5 and r["diff1"] < 1e-5, (r["diff0"], r["diff1"])
        assert r["norms0"] == pytest.approx(r["ref_norms"], rel=1e-5)  # logged norm: global, before clipping
        assert r["norms1"] == pytest.approx(r["ref_norms"], rel=1e-5)


def _frozen_engines() -> dict:
    from fusionrec.trainer.recipes.toy.module import ToyRegressor

    out = {}
    for stage in (1, 2, 3):
        strategy = DeepspeedStrategy(DeepSpeedConfig(zero_stage=stage, micro_batch_size=4))
        try:
            engine = strategy.prepare(ToyRegressor(), None, name="reference")
            out[stage] = f"engine in eval mode: {not engine.module.training}"
        except ValueError as err:
            out[stage] = str(err)
    return out


@pytest.mark.distributed
def test_frozen_engine_below_zero3_is_a_clear_error() -> None:
    (r0,) = run_distributed_test(_frozen_engines, world_size=1)
    for stage in (1, 2):
        assert f"engine 'reference': a frozen model (optim=None) cannot be a ZeRO-{stage} engine" in r0[stage]
    assert r0[3] == "engine in eval mode: True"  # ZeRO-3 partitions the frozen weights: allowed


def _base_lr_run() -> list[float]:
    """The toy engine's lr along its schedule (4 warm-up steps) with the base lr replaced after step 2."""
    import torch
    from fusionrec.trainer.recipes.toy.module import ToyRegressor

    strategy = DeepspeedStrategy(DeepSpeedConfig(zero_stage=1, micro_batch_size=8))
    strategy.setup()
    engine = strategy.prepare(ToyRegressor(), OptimConfig(lr=1e-2, warmup_steps=4), name="model")
    x, y = torch.randn(8, 16), torch.randn(8, 4)
    lrs = []
    for step in range(4):
        if step == 2:
            engine.set_base_lr(1e-3)
        lrs.append(engine.lr)
        strategy.backward(torch.nn.functional.mse_loss(engine(x), y), engine)
        strategy.step(engine)
    return lrs


@pytest.mark.distributed
def test_set_base_lr_rescales_the_schedule_from_the_current_step() -> None:
    (lrs,) = run_distributed_test(_base_lr_run, world_size=1)
    assert lrs == pytest.approx([1e-2 * 1 / 4, 1e-2 * 2 / 4, 1e-3 * 3 / 4, 1e-3 * 4 / 4])


class _Accel:
    def __init__(self, name: str, bf16: bool) -> None:
        self.name, self.bf16 = name, bf16

    def device_name(self) -> str:
        return self.name

    def is_bf16_supported(self) -> bool:
        return self.bf16


@pytest.mark.unit
def test_auto_precision_is_bf16_only_where_the_hardware_has_it(monkeypatch) -> None:
    from fusionrec.trainer import strategy as st

    assert st.resolve_precision("auto", _Accel("cuda", bf16=True)) == "bf16"
    assert st.resolve_precision("auto", _Accel("cuda", bf16=False)) == "fp32"
    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(st, "cpu_has_native_bf16", lambda native=native: native)
        # DeepSpeed's CPU accelerator says bf16 is supported everywhere (emulated): the CPU's kernels decide
        assert st.resolve_precision("auto", _Accel("cpu", bf16=True)) == want
    for explicit in ("fp32", "bf16", "fp16"):
        assert st.resolve_precision(explicit, _Accel("cpu", bf16=False)) == explicit
    resolved = DeepspeedStrategy(DeepSpeedConfig(precision="auto")).cfg.precision
    assert resolved == ("bf16" if st.cpu_has_native_bf16() else "fp32")
    assert DeepspeedStrategy(DeepSpeedConfig(precision="auto")).ds_config(None)["bf16"]["enabled"] == (
        resolved == "bf16"
    )
