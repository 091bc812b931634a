"""Checkpoints: discovery/verification (unit), exact resume + bad checkpoints + HF export (2 processes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fusionrec.trainer.checkpoint_reader import (
    MARKER,
    CheckpointError,
    list_checkpoints,
    resolve_checkpoint,
    resolve_resume,
    verify_checkpoint,
)
from fusionrec.trainer.testing import run_distributed_test


def _fake_checkpoint(root: Path, step: int, complete: bool = True) -> Path:
    d = root / f"step-{step}"
    d.mkdir(parents=True)
    (d / "a.bin").write_bytes(b"x" * 10)
    if complete:
        files = {"a.bin": {"bytes": 10}}
        (d / MARKER).write_text(
            json.dumps({"format_version": 1, "step": step, "world_size": 1, "files": files})
        )
    return d


@pytest.mark.unit
def test_discovery_ignores_incomplete_and_picks_newest(tmp_path: Path) -> None:
    _fake_checkpoint(tmp_path, 2)
    newest = _fake_checkpoint(tmp_path, 10)
    _fake_checkpoint(tmp_path, 12, complete=False)  # crashed mid-save: no marker
    (tmp_path / ".step-14.tmp").mkdir()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 10]
    assert resolve_resume(tmp_path, "auto") == newest
    assert resolve_resume(tmp_path / "none", "auto") is None and resolve_resume(tmp_path, None) is None
    with pytest.raises(CheckpointError, match="is not a directory"):
        resolve_resume(tmp_path, str(tmp_path / "step-99"))
    with pytest.raises(CheckpointError, match="incomplete"):
        verify_checkpoint(tmp_path / "step-12")


@pytest.mark.unit
def test_a_run_dir_means_its_newest_complete_checkpoint(tmp_path: Path) -> None:
    _fake_checkpoint(tmp_path / "checkpoints", 2)
    newest = _fake_checkpoint(tmp_path / "checkpoints", 5)
    _fake_checkpoint(tmp_path / "checkpoints", 9, complete=False)
    assert resolve_checkpoint(tmp_path) == newest.resolve()
    assert resolve_checkpoint(newest) == newest.resolve()
    with pytest.raises(CheckpointError, match="neither a checkpoint"):
        resolve_checkpoint(tmp_path / "checkpoints")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        resolve_checkpoint(tmp_path / "nope")


@pytest.mark.unit
def test_verify_detects_truncation_and_garbage(tmp_path: Path) -> None:
    d = _fake_checkpoint(tmp_path, 3)
    assert verify_checkpoint(d)["step"] == 3
    (d / "a.bin").write_bytes(b"x" * 7)
    with pytest.raises(CheckpointError, match=r"a.bin has 7 bytes, expected 10 \(corrupted\)"):
        verify_checkpoint(d)
    (d / MARKER).write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupted marker"):
        verify_checkpoint(d)


def _train(run_dir: str, steps: int, **ckpt) -> tuple[list[dict], object, object]:
    from fusionrec.trainer.callbacks import CheckpointCallback, HistoryCallback
    from fusionrec.trainer.config import CheckpointConfig, DeepSpeedConfig, OptimConfig, TrainConfig
    from fusionrec.trainer.loop import Trainer
    from fusionrec.trainer.recipes.toy.data import ToyBatches, make_regression
    from fusionrec.trainer.recipes.toy.module import ToyModule
    from fusionrec.trainer.strategy import DeepspeedStrategy

    hidden = ckpt.pop("hidden", 64)
    ds = DeepSpeedConfig(zero_stage=2, micro_batch_size=8, grad_accum=2)
    optim = OptimConfig(lr=1e-2, warmup_steps=2, total_steps=10)
    cfg = TrainConfig(
        run_dir=run_dir,
        max_steps=steps,
        log_every=1,
        tensorboard=False,
        progress=False,
        deepspeed=ds,
        optim=optim,
        checkpoint=CheckpointConfig(**ckpt),
    )
    strategy = DeepspeedStrategy(ds)
    strategy.setup()
    x, y = make_regression(96, 16, 4)  # 96 / (8 x 2 ranks) = 6 micro-batches: epochs end mid-run
    module = ToyModule(hidden=hidden, two_stage=True, stage_steps=3)
    loader = ToyBatches({"x": x, "y": y}, 8, strategy.rank, strategy.world_size)
    history = HistoryCallback()
    trainer = Trainer(cfg, strategy, module, loader, [history, CheckpointCallback()])
    trainer.fit()
    return history.logs, trainer, module


def _resume_run(root: str) -> dict:
    from fusionrec.trainer.checkpoint import CheckpointError
    from fusionrec.trainer.recipes.toy.module import weights_fingerprint

    root_p = Path(root)
    full, t_full, _ = _train(f"{root}/full", 8, save_at_end=False)
    first, _, _ = _train(f"{root}/split", 5, every_steps=2, keep_last=2)  # saves 2, 4, 5 -> keeps 4, 5
    kept = sorted(p.name for p in (root_p / "split/checkpoints").iterdir())
    t_full.strategy.barrier()
    if t_full.strategy.is_rank0:  # an unfinished newer save must be ignored by resume="auto"
        (root_p / "split/checkpoints/step-7").mkdir()
        shutil.copytree(root_p / "split/checkpoints/step-4", root_p / "bad/step-4")
        victim = next((root_p / "bad/step-4/encoder").glob("*optim_states.pt"))
        victim.write_bytes(victim.read_bytes()[:-100])
    t_full.strategy.barrier()
    rest, t_rest, m_rest = _train(f"{root}/split", 8, resume="auto")
    errors = {}
    for name, kw in {
        "corrupt": {"resume": f"{root}/bad/step-4"},
        "shape": {"resume": f"{root}/split/checkpoints/step-4", "hidden": 32},
    }.items():
        try:
            logs, _, _ = _train(f"{root}/err-{name}", 8, **kw)
            errors[name] = f"no error; logged {len(logs)} steps"
        except CheckpointError as err:
            errors[name] = str(err)
    return {
        "full": [log for log in full if "step" in log],
        "first": first,
        "rest": rest,
        "kept": kept,
        "errors": errors,
        "same_weights": weights_fingerprint(t_full.strategy, t_full.engines)
        == weights_fingerprint(t_rest.strategy, t_rest.engines),
        "phase_starts": m_rest.phase_starts,
        "state": t_rest.state.to_dict(),
    }


@pytest.mark.distributed
def test_resume_reproduces_uninterrupted_run_and_rejects_bad_checkpoints(tmp_path: Path) -> None:
    r0, r1 = run_distributed_test(_resume_run, world_size=2, root=str(tmp_path))
    loss = lambda log: next(v for k, v in log.items() if k.endswith("/loss"))  # noqa: E731
    full = [loss(log) for log in r0["full"]]
    assert [loss(log) for log in r0["first"]] == full[:5]
    assert [log["step"] for log in r0["rest"]] == [6, 7, 8]  # resumed from step-5, the newest complete one
    assert [loss(log) for log in r0["rest"]] == pytest.approx(full[5:], abs=1e-6, rel=0)
    assert [log[k] for log in r0["rest"] for k in log if k.endswith("/lr")] == pytest.approx(
        [log[k] for log in r0["full"][5:] for k in log if k.endswith("/lr")]
    )
    assert r0["same_weights"] and r1["same_weights"]
    assert r0["kept"] == ["step-4", "step-5"]  # keep_last=2 pruned step-2
    assert r0["state"]["step"] == 8 and r0["state"]["epochs_done"] == 2  # 16 micro-batches / 6 per epoch
    # Module state came back from the checkpoint ([encoder@0, head@0] at step 5, inside head@0); the
    # resumed phase's on_phase_start runs again (it rebuilds data), then encoder@1 starts at step 7.
    assert r0["phase_starts"] == ["encoder@0", "head@0", "head@0", "encoder@1"]
    for r in (r0, r1):  # both ranks raise the same clear error, before any step
        assert "sha256 mismatch" in r["errors"]["corrupt"] or "bytes, expected" in r["errors"]["corrupt"]
        assert "parameter" in r["errors"]["shape"] and "[32, 16]" in r["errors"]["shape"]


def _export_run(root: str) -> dict:
    import torch
    from fusionrec.trainer.callbacks import CheckpointCallback
    from fusionrec.trainer.checkpoint import export
    from fusionrec.trainer.config import DeepSpeedConfig, OptimConfig, TrainConfig
    from fusionrec.trainer.loop import Trainer
    from fusionrec.trainer.recipes.toy.data import ToyBatches, make_reversal
    from fusionrec.trainer.recipes.toy.module import ToySeq2SeqModule
    from fusionrec.trainer.strategy import DeepspeedStrategy
    from transformers import T5ForConditionalGeneration

    ds = DeepSpeedConfig(zero_stage=3, micro_batch_size=4)
    cfg = TrainConfig(
        run_dir=root, max_steps=3, tensorboard=False, progress=False, deepspeed=ds, optim=OptimConfig(lr=1e-2)
    )
    strategy = DeepspeedStrategy(ds)
    strategy._user_json = {"zero_optimization": {"stage3_param_persistence_threshold": 0}}
    strategy.setup()
    module = ToySeq2SeqModule()
    loader = ToyBatches(make_reversal(32), 4, strategy.rank, strategy.world_size)
    trainer = Trainer(cfg, strategy, module, loader, [CheckpointCallback()])
    trainer.fit()
    trained = strategy.full_state_dict(module.engines["model"])
    if not strategy.is_rank0:
        return {}
    written = export(
        Path(root) / "checkpoints/step-3", Path(root) / "export", {"model": module.build_model()}
    )
    reloaded = T5ForConditionalGeneration.from_pretrained(written["model"]).state_dict()
    init = module.build_model().state_dict()
    return {
        "files": sorted(p.name for p in written["model"].iterdir()),
        "max_diff": max((reloaded[k] - trained[k]).abs().max().item() for k in trained),
        "moved": max((init[k] - trained[k]).abs().max().item() for k in trained),
        "tied": reloaded["lm_head.weight"].data_ptr() == reloaded["shared.weight"].data_ptr()
        or torch.equal(reloaded["lm_head.weight"], reloaded["shared.weight"]),
    }


@pytest.mark.distributed
def test_export_zero3_t5_to_hf_folder(tmp_path: Path) -> None:
    r0, _ = run_distributed_test(_export_run, world_size=2, root=str(tmp_path))
    assert "config.json" in r0["files"] and "model.safetensors" in r0["files"]
    assert r0["moved"] > 1e-3  # trained weights, not the init
    assert r0["max_diff"] == 0.0 and r0["tied"]
