"""Ray Train (TorchTrainer + DeepSpeed) training: cluster/ray_train.py (driven by `fusionrec train --ray`).

Unit tests check what the driver decides before any worker starts (preflight errors, paths, the config sent
to workers, error messages built from real Ray Train exception types). The distributed tests run real
TorchTrainer worker groups of 2 DeepSpeed ranks on the embedded local Ray: a toy run that must train and
checkpoint, and a GenRec run without a corpus that must fail naming the recipe and the missing manifest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fusionrec.cluster.ray_train import (
    POINTER_FILE,
    RAY_STORAGE_DIR,
    SUMMARY_FILE,
    RayTrainConfig,
    RayTrainError,
    WorkerFailure,
    _absolute_paths,
    _as_error,
    _describe,
    _pickles,
    _scalar_metrics,
    train_on_ray,
)
from fusionrec.launch.config import Config, load_config
from fusionrec.launch.train import recipe_run
from fusionrec.trainer.worker import RecipeRun

MAX_STEPS, MICRO, WORKERS = 12, 8, 2


def toy_config(run_dir: Path, *extra: str) -> Config:
    return load_config(
        None,
        [
            f"train.run_dir={json.dumps(str(run_dir))}",
            f"train.max_steps={MAX_STEPS}",
            "train.log_every=3",
            f"train.deepspeed.micro_batch_size={MICRO}",
            "train.progress=false",
            "train.tensorboard=false",
            *extra,
        ],
    )


# ------------------------------------------------------------------------------------------------ unit


@pytest.mark.unit
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_workers": 0}, "num_workers"),
        ({"cpus_per_worker": 0}, "cpus_per_worker"),
        ({"max_failures": -1}, "max_failures"),
        ({"name": "a/b"}, "name"),
        ({"name": ""}, "name"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"ray_train\.{field}"):
        RayTrainConfig(**kwargs)


@pytest.mark.unit
def test_unknown_recipe_fails_before_ray(tmp_path, capsys):
    from fusionrec.launch.cli import main

    with pytest.raises(
        ValueError, match=r"unknown recipe 'nope'; known: dmpo, genrec, idgenrec, palr, sasrec, toy"
    ):
        recipe_run("nope")
    run = json.dumps(str(tmp_path / "run"))
    assert main(["train", "nope", "--ray", "--nproc", "2", f"train.run_dir={run}"]) == 2
    assert capsys.readouterr().err.startswith("fusionrec train: error: unknown recipe 'nope'")
    assert not (tmp_path / "run").exists()  # nothing written, no Ray started
    with pytest.raises(TypeError, match="needs a RecipeRun"):  # a bare name cannot be resolved down here
        train_on_ray("toy", toy_config(tmp_path / "run"), num_workers=2)


@pytest.mark.unit
def test_recipe_run_travels_to_workers_by_reference():
    """The driver ships the RecipeRun pickled; the builder and config writer arrive as the same module-level
    functions (workers import the recipe folder themselves; cluster/ never imports launch/)."""
    from fusionrec.launch.config import write_resolved
    from fusionrec.trainer.recipes.toy.build import build as build_toy
    from ray import cloudpickle

    run = recipe_run("toy")
    assert run == RecipeRun("toy", build_toy, write_resolved)
    back = cloudpickle.loads(cloudpickle.dumps(run))
    assert back == run and back.builder is build_toy and back.write_config is write_resolved


@pytest.mark.unit
def test_impossible_batch_arithmetic_fails_before_ray(tmp_path):
    cfg = toy_config(tmp_path / "run", "train.deepspeed.global_batch_size=7")
    with pytest.raises(ValueError, match=r"global_batch_size=7 .* x world_size=2 = 16"):
        train_on_ray(recipe_run("toy"), cfg, num_workers=2)
    assert not (tmp_path / "run").exists()


@pytest.mark.unit
def test_relative_paths_become_absolute_and_the_config_pickles(tmp_path, monkeypatch):
    from ray import cloudpickle

    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["train.run_dir=runs/a", "corpus=data/c", "train.optim.lr=0.003"])
    out = _absolute_paths(cfg)
    assert out.train.run_dir == str(tmp_path / "runs" / "a")
    assert out.corpus == str(tmp_path / "data" / "c")
    assert cfg.train.run_dir == "runs/a"  # the caller's config is not mutated
    assert cloudpickle.loads(cloudpickle.dumps(out)) == out  # what workers receive is what was validated
    assert _absolute_paths(load_config(None, [])).corpus == ""  # "" keeps meaning <run_dir>/corpus


@pytest.mark.unit
def test_scalar_metrics_take_the_last_logged_value_and_final_counters():
    summary = {
        "recipe": "toy",
        "logs": [
            {"step": 3, "train/loss": 0.5},
            {"step": 6, "train/loss": 0.25},
            {"step": 6, "val/hr@10": 0.1},
        ],
        "step": 7,
        "samples_seen": 112,
        "skipped": {"short": 2},
    }
    assert _scalar_metrics(summary) == {
        "step": 7.0,
        "train/loss": 0.25,
        "val/hr@10": 0.1,
        "samples_seen": 112.0,
    }


@pytest.mark.unit
def test_worker_failures_become_one_error_naming_recipe_ranks_and_causes():
    from ray.exceptions import RayTaskError
    from ray.train import ControllerError, WorkerGroupError

    try:
        raise FileNotFoundError("/x/manifest.json: not a corpus")
    except FileNotFoundError as cause:
        wrapped = RayTaskError("train_fn", "traceback", cause).as_instanceof_cause()
    err = _as_error(
        "genrec",
        RayTrainConfig(num_workers=2),
        WorkerGroupError("snippet", {1: ValueError("bad\nbatch"), 0: wrapped}),
    )
    assert isinstance(err, RayTrainError) and err.recipe == "genrec" and sorted(err.failures) == [0, 1]
    assert str(err) == (
        "Ray Train run of recipe 'genrec' (2 workers) failed: "
        "rank 0: FileNotFoundError: /x/manifest.json: not a corpus; rank 1: ValueError: bad batch"
    )
    ctrl = _as_error("toy", RayTrainConfig(num_workers=3), ControllerError(RuntimeError("no placement")))
    assert str(ctrl) == "Ray Train run of recipe 'toy' (3 workers) failed: RuntimeError: no placement"
    assert ctrl.failures == {}
    assert _describe(wrapped).startswith("FileNotFoundError: ")


@pytest.mark.unit
def test_unpicklable_worker_errors_keep_their_type_name_and_message():
    from fusionrec.data_pipeline.errors import DataError

    class Unpicklable(Exception):  # a user exception whose __init__ takes more than the message
        def __init__(self, path, line):
            super().__init__(f"{path}:{line}: bad")

    assert _pickles(ValueError("x")) and not _pickles(Unpicklable("/c/manifest.json", 3))
    assert _pickles(DataError("/c/manifest.json", 3, "bad"))  # DataError defines __reduce__
    failure = WorkerFailure("Unpicklable", str(Unpicklable("/c/manifest.json", 3)))
    assert _pickles(failure)
    assert _describe(failure) == "Unpicklable: /c/manifest.json:3: bad"


@pytest.mark.unit
def test_job_entry_point_exits_nonzero_with_the_cause_on_stderr(tmp_path, capsys):
    """`fusionrec train RECIPE --ray` is the `ray job submit` entry point: a failed job is a non-zero exit
    (ray's CLI then exits 1) with one line naming the cause."""
    from fusionrec.launch.cli import main

    run = json.dumps(str(tmp_path / "run"))
    argv = [
        "train",
        "toy",
        "--ray",
        "--nproc",
        "2",
        f"train.run_dir={run}",
        "train.deepspeed.global_batch_size=7",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fusionrec train: error: inconsistent batch arithmetic: "), err
    assert "global_batch_size=7" in err and "world_size=2 = 16" in err and err.count("\n") == 1


# ------------------------------------------------------------------------------------------------ Ray


@pytest.mark.integration
def test_ray_session_shuts_down_only_the_ray_it_started():
    """cluster/ray_local.ray_session: what bench/eval.py uses instead of importing ray for ray.shutdown()."""
    import ray
    from fusionrec.cluster.ray_local import RayConfig, ray_session, shutdown_ray

    was_up = ray.is_initialized()
    with ray_session(RayConfig(num_cpus=2)) as outer:
        assert ray.is_initialized() and outer == ray.get_runtime_context().gcs_address
        with ray_session() as inner:  # joins the running session instead of starting another
            assert inner == outer
        assert ray.is_initialized()  # the inner block did not start Ray, so it must not stop it
    assert ray.is_initialized() == was_up
    if not was_up:
        shutdown_ray()  # no Ray: a no-op, not an error


@pytest.fixture(scope="module")
def local_ray():
    """One embedded Ray for this module (2 CPUs: one per DeepSpeed rank), shut down at the end."""
    import ray
    from fusionrec.cluster.ray_local import RayConfig, init_ray

    started = not ray.is_initialized()
    init_ray(RayConfig(num_cpus=2))
    yield
    if started:
        ray.shutdown()


@pytest.mark.distributed
def test_toy_trains_on_two_ray_train_workers(tmp_path, local_ray):
    run_dir = tmp_path / "run"
    summary = train_on_ray(recipe_run("toy"), toy_config(run_dir), num_workers=WORKERS, name="toy-test")

    # Rank 0's summary came back through Ray and is exactly what rank 0 wrote to the run dir.
    assert summary == json.loads((run_dir / SUMMARY_FILE).read_text())
    assert summary["recipe"] == "toy" and summary["run_dir"] == str(run_dir)
    run_meta = json.loads((run_dir / "run.json").read_text())
    assert run_meta == {"recipe": "toy", "world_size": WORKERS, "precision": "fp32"}  # the resolved precision
    assert summary["step"] == MAX_STEPS
    assert summary["samples_seen"] == MAX_STEPS * MICRO * WORKERS  # both ranks fed every step
    losses = [e["train/loss"] for e in summary["logs"] if "train/loss" in e]
    assert [e["step"] for e in summary["logs"]] == [3, 6, 9, 12]
    assert losses[-1] < 0.9 * losses[0], losses

    # The DeepSpeed checkpoint is complete and written by both ranks (ZeRO-1 optimizer shards).
    ckpt = run_dir / "checkpoints" / f"step-{MAX_STEPS}"
    assert (ckpt / "COMPLETE.json").is_file()
    assert json.loads((ckpt / "COMPLETE.json").read_text())["world_size"] == WORKERS
    assert len(list((ckpt / "model").glob("zero_pp_rank_*_optim_states.pt"))) == WORKERS

    # Ray Train's run lives inside the run dir; its checkpoint points at the DeepSpeed one.
    pointers = list((run_dir / RAY_STORAGE_DIR / "toy-test").glob(f"checkpoint_*/{POINTER_FILE}"))
    assert len(pointers) == 1
    assert json.loads(pointers[0].read_text()) == {
        "run_dir": str(run_dir),
        "recipe": "toy",
        "step": MAX_STEPS,
        "checkpoint": str(ckpt),
    }


@pytest.mark.distributed
def test_worker_error_fails_the_call_naming_recipe_and_cause(tmp_path, local_ray):
    missing = tmp_path / "no-corpus"
    cfg = load_config(
        None, [f"train.run_dir={json.dumps(str(tmp_path / 'run'))}", f"corpus={json.dumps(str(missing))}"]
    )
    with pytest.raises(RayTrainError) as info:
        train_on_ray(recipe_run("genrec"), cfg, num_workers=WORKERS)
    msg = str(info.value)
    # Which ranks fail before the controller stops the group is timing-dependent; at least one must be named.
    assert msg.startswith("Ray Train run of recipe 'genrec' (2 workers) failed: rank "), msg
    assert info.value.failures and set(info.value.failures) <= {0, 1}
    assert f"{missing}/manifest.json: not a corpus: no manifest.json" in msg
    # Every failing rank is named with the real cause (DataError pickles, so it arrives as itself).
    for rank, failure in info.value.failures.items():
        assert f"rank {rank}: DataError: {missing}/manifest.json" in msg
        assert type(failure).__name__ == "DataError" and "not a corpus" in str(failure)
    assert not (tmp_path / "run" / SUMMARY_FILE).exists()


# ------------------------------------------------------------------------------------------------ ray job submit


def _submit_job(dashboard_url: str, args: list[str]) -> subprocess.CompletedProcess:
    from fusionrec.cluster.ray_local import _ray_cli

    cmd = [_ray_cli(), "job", "submit", "--address", dashboard_url, "--", sys.executable, "-m"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*cmd, "fusionrec.launch.cli", "train", *args], capture_output=True, text=True, env=env, timeout=420
    )


@pytest.mark.integration
def test_ray_job_submit_trains_across_two_nodes(tmp_path):
    """A head + a worker node on 127.0.0.1 with 1 CPU each: the job's 2 Ray Train workers must land on
    different nodes, so the gloo process group and the ZeRO checkpoint span two Ray nodes."""
    from fusionrec.cluster.ray_local import LocalRayCluster

    run_dir = tmp_path / "run"
    overrides = [f"train.run_dir={run_dir}", f"train.max_steps={MAX_STEPS}", "train.log_every=3",
                 "train.progress=false", "train.tensorboard=false"]  # fmt: skip
    with LocalRayCluster(num_workers=1, cpus_per_node=1) as cluster:
        ok = _submit_job(
            cluster.dashboard_url, ["toy", "--ray", "--nproc", "2", "--ray-name", "job", *overrides]
        )
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    printed = [json.loads(line) for line in ok.stdout.splitlines() if line.startswith('{"recipe": "toy"')]
    assert printed == [json.loads((run_dir / SUMMARY_FILE).read_text())]
    assert printed[0]["step"] == MAX_STEPS and printed[0]["samples_seen"] == MAX_STEPS * 8 * WORKERS
    assert json.loads((run_dir / "run.json").read_text())["world_size"] == WORKERS
    assert (run_dir / "checkpoints" / f"step-{MAX_STEPS}" / "COMPLETE.json").is_file()
    assert len(list((run_dir / RAY_STORAGE_DIR / "job").glob(f"checkpoint_*/{POINTER_FILE}"))) == 1
