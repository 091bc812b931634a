"""A crafted checkpoint never runs code: every process loads weights-only, every file is scanned first.

The attack: replace a checkpoint's DeepSpeed model or optimizer file with a pickle whose ``__reduce__``
runs a shell command, and rewrite ``COMPLETE.json``'s sizes and hashes to match (the marker gives integrity,
not authenticity). Each command that reads a checkpoint must refuse it with a message naming the file, and the
payload's command (``touch PWNED``) must never run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fusionrec.launch.cli import main
from test_zeroshot import build_tiny_run


class _Payload:
    """Pickles as ``os.system(cmd)``: what an attacker puts into a checkpoint file."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def craft(checkpoint: Path, rel: str, pwned: Path) -> None:
    """Replace ``checkpoint/rel`` by the payload and make COMPLETE.json agree with it."""
    torch.save({"module": _Payload(f"touch {pwned}"), "optimizer_state_dict": {}}, checkpoint / rel)
    marker = json.loads((checkpoint / "COMPLETE.json").read_text())
    data = (checkpoint / rel).read_bytes()
    marker["files"][rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / "COMPLETE.json").write_text(json.dumps(marker))


def _clean_env() -> dict[str, str]:
    dist_vars = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in dist_vars}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)  # the child must set it itself, by importing fusionrec
    return env


@pytest.mark.unit
def test_any_process_that_imports_fusionrec_loads_weights_only(tmp_path: Path) -> None:
    evil, pwned = tmp_path / "evil.pt", tmp_path / "PWNED"
    torch.save({"x": _Payload(f"touch {pwned}")}, evil)
    # A fresh process (as a rank, a Ray worker or a subprocess starts), an explicit weights_only=False,
    # and the opt-out variable set by the user: still refused.
    code = (
        "import fusionrec.data_pipeline, torch, sys\n"
        f"try:\n    torch.load({str(evil)!r}, weights_only=False)\nexcept Exception as e:\n"
        "    print(type(e).__name__); sys.exit(3)\n"
    )
    env = dict(_clean_env(), TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3 and "UnpicklingError" in proc.stdout, proc.stderr[-2000:]
    assert not pwned.exists()
    # Its children inherit the setting without importing us.
    child = f"import torch; torch.load({str(evil)!r}, weights_only=False)"
    code = f"import fusionrec, subprocess, sys; sys.exit(subprocess.call([sys.executable, '-c', {child!r}]))"
    proc = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True)
    assert proc.returncode == 1 and "Weights only load failed" in proc.stderr
    assert not pwned.exists()


@pytest.mark.unit
def test_check_pickle_names_the_file_and_the_global(tmp_path: Path) -> None:
    from fusionrec.safe_pickle import UnsafePickleError, check_pickle

    evil, legacy, good = tmp_path / "evil.pt", tmp_path / "legacy.pt", tmp_path / "good.pt"
    torch.save({"x": _Payload("true")}, evil)
    torch.save({"x": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    torch.save({"x": torch.ones(2), "n": [1, "a"]}, good)
    check_pickle(good)
    with pytest.raises(UnsafePickleError, match=rf"{evil}: references posix.system"):
        check_pickle(evil)
    with pytest.raises(UnsafePickleError, match=rf"{legacy}: not a torch checkpoint file"):
        check_pickle(legacy)


# ------------------------------------------------------------------------------------- resume (train CLI)
TOY = ["train.max_steps=3", "train.deepspeed.zero_stage=2", "train.tensorboard=false", "train.progress=false"]
TARGETS = {"model": "model/mp_rank_00_model_states.pt", "optimizer": "model/zero_pp_rank_0_mp_rank_00_optim_states.pt"}  # fmt: skip


def _train_toy(run_dir: Path, nproc: int, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fusionrec.launch.cli", "train", "toy", "--nproc", str(nproc),
           f"train.run_dir={run_dir}", *TOY, *extra]  # fmt: skip
    return subprocess.run(cmd, env=_clean_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory) -> Path:
    """A real ZeRO-2 checkpoint of one rank (model and optimizer files) from `fusionrec train toy`."""
    run = tmp_path_factory.mktemp("toy") / "run"
    proc = _train_toy(run, 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = run / "checkpoints" / "step-3"
    assert all((ckpt / rel).is_file() for rel in TARGETS.values())
    return ckpt


@pytest.mark.integration
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_resume_refuses_a_crafted_file_on_the_same_and_another_world_size(toy_checkpoint, tmp_path, target):
    bad, pwned = tmp_path / "step-3", tmp_path / "PWNED"
    shutil.copytree(toy_checkpoint, bad)
    craft(bad, TARGETS[target], pwned)
    for nproc in (1, 2):  # saved by 1 rank: the same world size, then another one (the resharding path)
        proc = _train_toy(
            tmp_path / f"resume{nproc}", nproc, f"train.checkpoint.resume={bad}", "train.max_steps=5"
        )
        assert proc.returncode != 0
        assert f"{bad / TARGETS[target]}: references posix.system" in proc.stderr, proc.stderr[-3000:]
        assert not pwned.exists()
    assert not (tmp_path / "resume1" / "checkpoints" / "step-5").exists()


# ------------------------------------------------------------------------- export / evaluate / zeroshot
IDGENREC_TARGETS = {
    "model": "recommender/mp_rank_00_model_states.pt",
    "optimizer": "recommender/zero_pp_rank_0_mp_rank_00_optim_states.pt",
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_run(tmp_path_factory.getbasetemp() / "tiny_idgenrec_run")


@pytest.mark.integration
@pytest.mark.parametrize("target", sorted(IDGENREC_TARGETS))
def test_export_evaluate_and_zeroshot_refuse_a_crafted_file(tiny_run, tmp_path, capsys, target):
    run, pwned = tmp_path / "run", tmp_path / "PWNED"
    shutil.copytree(tiny_run["run"], run, ignore=shutil.ignore_patterns("tensorboard"))
    ckpt = run / "checkpoints" / tiny_run["checkpoint"].name
    craft(ckpt, IDGENREC_TARGETS[target], pwned)
    commands = {
        "export": ["export", str(ckpt), "--out", str(tmp_path / "export")],
        "evaluate": ["evaluate", "--checkpoint", str(ckpt), "--data", str(tiny_run["corpus"])],
        "zeroshot": ["zeroshot", "--checkpoint", str(ckpt), "--data", str(tiny_run["corpus"])],
    }
    for name, argv in commands.items():
        capsys.readouterr()
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert f"{ckpt / IDGENREC_TARGETS[target]}: references posix.system" in err, (name, err)
        assert not pwned.exists(), name
    assert not (tmp_path / "export").exists()
