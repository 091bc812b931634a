"""Training under Ray Train: a `TorchTrainer` whose workers each run one DeepSpeed rank of any recipe.

    summary = train_on_ray(recipe_run("genrec"), cfg, num_workers=8, use_gpu=True, address="auto")
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        fusionrec train toy --ray --nproc 2 train.run_dir=/shared/runs/toy

(`recipe_run` is `fusionrec.launch.train.recipe_run`: the caller, which owns the recipe registry and the
root config, binds the recipe to its builder; this module never imports launch/.)

Ray Train starts `num_workers` actors (1 CPU each on CPU, 1 GPU each with `use_gpu`), brings up the torch
process group between them (gloo on CPU, NCCL on GPU) and calls :func:`train_loop_per_worker` in each.
That function runs exactly what `fusionrec train` runs in a torchrun rank - `trainer.worker.run_recipe` -
whose `DeepspeedStrategy.setup()` joins the already initialised process group instead of creating one.
So a recipe behaves identically under torchrun, the deepspeed launcher, `launch/multinode.sh` and Ray Train.

What crosses the driver/worker boundary, and why:
- The resolved root config (a tree of plain dataclasses, all importable) and the `RecipeRun` (its builder
  and config writer are module-level functions, pickled by reference) travel inside Ray Train's
  `train_loop_config` dict; the driver checks first that it survives the round trip unchanged, so every
  worker trains with exactly the config the driver validated and wrote to `RUN/config.toml`.
- Rank 0 reports a tiny Ray `Checkpoint` holding `train_summary.json` and a pointer to the newest DeepSpeed
  checkpoint of the run. Ray Train 2.60 (Train V2) only attaches metrics to reported checkpoints, so this is
  how rank 0's summary reaches the driver through Ray rather than through a shared disk. The DeepSpeed
  checkpoint itself stays in `RUN/checkpoints/` (Ray never copies model weights).
- Worker failures come back as :class:`RayTrainError` naming the recipe, the failing ranks and each cause.

Multi-node: `train.run_dir` (and the corpus) must be on storage every node sees, as for any DeepSpeed run;
Ray Train's own storage (`RUN/ray_train/<name>/`) lives inside it.

The root config is used by duck typing: `cfg.train` (trainer's TrainConfig) and, when present, `cfg.corpus`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..trainer.worker import SUMMARY_FILE, RecipeRun
from .ray_local import RayConfig, apply_ray_env, init_ray

Config = Any  # the root config tree (launch/config.py); only `train` and `corpus` are read here

RAY_STORAGE_DIR = "ray_train"  # RUN/ray_train/<name>/: Ray Train's run state and reported checkpoints
POINTER_FILE = "fusionrec_checkpoint.json"
# Environment forwarded to the workers at process start (an explicit driver value wins over the defaults).
WORKER_ENV_DEFAULTS = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "TOKENIZERS_PARALLELISM", "FUSIONREC_DEBUG", "NCCL_DEBUG")


class RayTrainError(RuntimeError):
    """A Ray Train run that failed; `failures` maps world rank -> that worker's exception (empty when the
    controller itself failed, e.g. the workers could not be scheduled)."""

    def __init__(self, message: str, recipe: str, failures: dict[int, BaseException] | None = None) -> None:
        super().__init__(message)
        self.recipe = recipe
        self.failures = dict(failures or {})


class WorkerFailure(RuntimeError):
    """A worker's exception that cannot cross the process boundary as itself (it does not pickle), carried
    as its type name and message so the driver still reports the real cause."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(kind, message)
        self.kind, self.message = kind, message

    def __str__(self) -> str:
        return self.message


@dataclass
class RayTrainConfig:
    """How the TorchTrainer is scaled and where it runs; `address=None` = the embedded local Ray."""

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: int = 1  # CPU runs only: one DeepSpeed rank per core (see ENVIRONMENT.md)
    address: str | None = None
    name: str | None = None  # Ray Train run name; None = "<recipe>-<time>-<random>"
    max_failures: int = 0  # whole-group restarts; > 0 needs checkpoint.resume = "auto" to make sense

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"ray_train.num_workers must be >= 1, got {self.num_workers}")
        if self.cpus_per_worker < 1:
            raise ValueError(f"ray_train.cpus_per_worker must be >= 1, got {self.cpus_per_worker}")
        if self.max_failures < 0:
            raise ValueError(f"ray_train.max_failures must be >= 0, got {self.max_failures}")
        if self.name is not None and (not self.name or "/" in self.name):
            raise ValueError(f"ray_train.name must be a non-empty name without '/', got {self.name!r}")


# ------------------------------------------------------------------------------------------------ driver


def train_on_ray(
    run: RecipeRun,
    cfg: Config,
    num_workers: int,
    use_gpu: bool = False,
    address: str | None = None,
    *,
    name: str | None = None,
    max_failures: int = 0,
) -> dict[str, Any]:
    """Train `run.recipe` with `num_workers` DeepSpeed ranks under Ray Train; returns rank 0's summary.

    `run` binds the recipe to its builder (`fusionrec.launch.train.recipe_run(name)`, which raises
    ValueError for an unknown name). The summary is exactly what rank 0 wrote to `RUN/train_summary.json`
    (recipe, run_dir, logs, final TrainState). Raises ValueError before starting anything for batch
    arithmetic that cannot work with `num_workers` ranks, and RayTrainError (naming the recipe and every
    failing rank's cause) when training fails in the workers.
    """
    apply_ray_env()  # before anything imports ray: its constants read these variables at import time
    rt = RayTrainConfig(num_workers, use_gpu, address=address, name=name, max_failures=max_failures)
    cfg = _preflight(run, cfg, rt)
    run_dir = Path(cfg.train.run_dir)
    init_ray(RayConfig(address=address, num_cpus=max(2, rt.num_workers * rt.cpus_per_worker)))
    _check_capacity(rt)
    trainer = _build_trainer(run, cfg, rt)
    try:
        result = trainer.fit()
    except Exception as err:  # noqa: BLE001 - every Ray Train failure becomes one clear error
        raise _as_error(run.recipe, rt, err) from err
    return _summary_from(result, run.recipe, run_dir)


def _preflight(run: RecipeRun, cfg: Config, rt: RayTrainConfig) -> Config:
    """Checks that fail in milliseconds here rather than after the worker group starts; returns the config
    with absolute paths (workers may run in another working directory) and writes it to the run dir."""
    from ray import cloudpickle

    if not isinstance(run, RecipeRun):
        raise TypeError(f"train_on_ray needs a RecipeRun (launch.train.recipe_run(name)), got {run!r}")
    cfg = _absolute_paths(cfg)
    cfg.train.deepspeed.resolve_batch(rt.num_workers)  # ValueError naming micro x accum x world
    for what, obj in (("config", cfg), (f"recipe {run.recipe!r} (its builder)", run)):
        try:
            same = cloudpickle.loads(cloudpickle.dumps(obj)) == obj
        except Exception as err:  # noqa: BLE001 - any pickling failure means workers cannot receive it
            raise ValueError(
                f"the {what} does not pickle ({err}), so Ray Train workers cannot receive it"
            ) from err
        if not same:
            raise ValueError(f"the {what} does not survive pickling, so Ray Train workers cannot receive it")
    if run.write_config is not None:
        run.write_config(cfg, Path(cfg.train.run_dir))  # kept even if the workers never start
    return cfg


def _absolute_paths(cfg: Config) -> Config:
    """`train.run_dir` and `corpus` (when the config has one) made absolute against the driver's cwd."""
    train = dataclasses.replace(cfg.train, run_dir=str(Path(cfg.train.run_dir).resolve()))
    if not hasattr(cfg, "corpus"):
        return dataclasses.replace(cfg, train=train)
    corpus = str(Path(cfg.corpus).resolve()) if cfg.corpus else ""
    return dataclasses.replace(cfg, train=train, corpus=corpus)


def _check_capacity(rt: RayTrainConfig) -> None:
    """Ray Train waits indefinitely for resources a fixed cluster will never have; say so instead."""
    import ray

    total = ray.cluster_resources()
    need_key, need = ("GPU", rt.num_workers) if rt.use_gpu else ("CPU", rt.num_workers * rt.cpus_per_worker)
    autoscaling = rt.address is not None or bool(os.environ.get("RAY_ADDRESS"))
    if total.get(need_key, 0) < need and not autoscaling:
        raise ValueError(
            f"Ray Train needs {need:g} {need_key} for {rt.num_workers} workers but the local Ray has "
            f"{total.get(need_key, 0):g}; lower num_workers or start Ray with more resources"
        )


def _build_trainer(run: RecipeRun, cfg: Config, rt: RayTrainConfig) -> Any:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    run_dir = Path(cfg.train.run_dir)
    name = rt.name or f"{run.recipe}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    scaling = ScalingConfig(
        num_workers=rt.num_workers,
        use_gpu=rt.use_gpu,
        resources_per_worker=None if rt.use_gpu else {"CPU": rt.cpus_per_worker},
    )
    run_config = RunConfig(
        name=name,
        storage_path=str(run_dir / RAY_STORAGE_DIR),
        failure_config=FailureConfig(max_failures=rt.max_failures),
        # Set at worker process start, before torch/OpenMP or transformers read them.
        worker_runtime_env={"env_vars": _worker_env(rt)},
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "recipe_run": run,
            "config": cfg,
            "use_gpu": rt.use_gpu,
            "cwd": os.getcwd(),
        },
        scaling_config=scaling,
        run_config=run_config,
        torch_config=TorchConfig(timeout_s=cfg.train.deepspeed.dist_timeout_s),
    )


def _worker_env(rt: RayTrainConfig) -> dict[str, str]:
    env = dict(WORKER_ENV_DEFAULTS)
    env.update({k: os.environ[k] for k in FORWARDED_ENV if k in os.environ})
    if not rt.use_gpu:
        env["OMP_NUM_THREADS"] = str(rt.cpus_per_worker)
    return env


def _as_error(recipe: str, rt: RayTrainConfig, err: Exception) -> RayTrainError:
    """One readable error: recipe, world size, and each failing rank's exception type and message."""
    failures: dict[int, BaseException] = dict(getattr(err, "worker_failures", None) or {})
    where = f"Ray Train run of recipe {recipe!r} ({rt.num_workers} workers)"
    if failures:
        causes = "; ".join(f"rank {r}: {_describe(e)}" for r, e in sorted(failures.items()))
        return RayTrainError(f"{where} failed: {causes}", recipe, failures)
    cause = getattr(err, "controller_failure", None) or err
    return RayTrainError(f"{where} failed: {_describe(cause)}", recipe)


def _describe(err: BaseException) -> str:
    """`Type: message` of the user's exception, unwrapped from Ray's task-error wrapper (whose str() is a
    traceback) and with the type named as the user knows it, not Ray's dynamic `RayTaskError(Type)`."""
    from ray.exceptions import RayTaskError

    if isinstance(err, RayTaskError) and err.cause is not None:
        err = err.cause
    if isinstance(err, WorkerFailure):
        return f"{err.kind}: {' '.join(err.message.split())}"
    kind = next((c.__name__ for c in type(err).__mro__ if not c.__module__.startswith("ray")), "Exception")
    return f"{kind}: {' '.join(str(err).split())}"


def _summary_from(result: Any, recipe: str, run_dir: Path) -> dict[str, Any]:
    if result.checkpoint is None:
        raise RayTrainError(
            f"Ray Train run of recipe {recipe!r} finished but rank 0 reported no summary "
            f"(Ray run dir {result.path}; see {run_dir / SUMMARY_FILE})",
            recipe,
        )
    with result.checkpoint.as_directory() as d:
        return json.loads((Path(d) / SUMMARY_FILE).read_text())


# ------------------------------------------------------------------------------------------------ workers


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One rank: run the RecipeRun (`trainer.worker.run_recipe`; process group already up), report to Ray
    Train.

    Module-level (importable) on purpose: a function defined in `__main__` that touches torch fails to
    unpickle in Ray workers (ENVIRONMENT.md).
    """
    import ray.train

    if config["use_gpu"]:
        import torch

        torch.cuda.set_device(ray.train.torch.get_device())  # the strategy skips set_device when the PG is up
    else:
        # One intra-op thread per rank: oversubscribed ranks made ZeRO-3 36x slower on 2 cores. The runtime
        # env already sets it at process start; this also covers workers started without it.
        os.environ["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    _enter_driver_cwd(config["cwd"])
    cfg: Config = config["config"]
    try:
        summary = config["recipe_run"](cfg)
    except Exception as err:
        if _pickles(err):
            raise
        raise WorkerFailure(type(err).__name__, str(err)) from err
    metrics = _scalar_metrics(summary)
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)  # every rank must report the same number of times (it is a barrier)
        return
    tmp = Path(tempfile.mkdtemp(prefix="fusionrec-ray-train-"))
    try:
        _write_summary_checkpoint(tmp, summary, cfg)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _pickles(err: BaseException) -> bool:
    """Whether Ray can ship `err` to the driver (an exception whose __init__ takes other arguments than its
    `args` - e.g. DataError(path, line, msg) - fails to unpickle and would hide the cause)."""
    from ray import cloudpickle

    try:
        cloudpickle.loads(cloudpickle.dumps(err))
    except Exception:  # noqa: BLE001 - any failure means "not shippable"
        return False
    return True


def _enter_driver_cwd(cwd: str) -> None:
    """Ray Train V2 moves every worker into its run's artifacts dir; relative paths in the config (a user
    DeepSpeed JSON, a tokenizer folder, a resume path) mean the launch directory, as under torchrun. On a
    node without that directory (another machine) the worker stays where Ray put it."""
    if Path(cwd).is_dir():
        os.chdir(cwd)
    else:
        print(f"[fusionrec] ray_train: driver cwd {cwd} not on this node; relative config paths resolve "
              f"against {os.getcwd()}", flush=True)  # fmt: skip


def _write_summary_checkpoint(out: Path, summary: dict[str, Any], cfg: Config) -> None:
    """The Ray checkpoint of a run: the summary plus where the real (DeepSpeed) checkpoint is."""
    from fusionrec.trainer.checkpoint import list_checkpoints

    root = Path(cfg.train.checkpoint.dir)
    root = root if root.is_absolute() else Path(cfg.train.run_dir) / root
    found = list_checkpoints(root)
    pointer = {
        "run_dir": cfg.train.run_dir,
        "recipe": summary["recipe"],
        "step": summary.get("step"),
        "checkpoint": str(found[-1][1]) if found else None,
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    (out / POINTER_FILE).write_text(json.dumps(pointer, indent=2))


def _scalar_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """Final counters and the last logged value of every metric (what Ray's UI and Result.metrics show)."""
    out: dict[str, float] = {}
    for entry in summary.get("logs", []):
        out.update({k: float(v) for k, v in entry.items() if isinstance(v, int | float)})
    out.update(
        {k: float(v) for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    )
    return out


__all__ = [
    "RayTrainConfig",
    "RayTrainError",
    "WorkerFailure",
    "train_loop_per_worker",
    "train_on_ray",
]
