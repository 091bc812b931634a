"""DeepspeedStrategy: every DeepSpeed call of the project lives in this module (OpenRLHF style).

Nothing else in fusionrec imports ``deepspeed``. Recipes see two types:

* :class:`DeepspeedStrategy` - process-group setup (``deepspeed`` launcher, ``torchrun``, Ray Train workers
  and a bare single process, all from the same code), the DeepSpeed JSON generated from the typed config,
  ``prepare(model, optim_cfg) -> Engine`` (several engines per run, some frozen), ``backward``/``step``,
  checkpoint ``save``/``load`` (``load_resharded`` at another world size), ZeRO-3-safe ``full_state_dict``, all-reduce/gather/broadcast, barrier.
* :class:`Engine` - a model wrapped by DeepSpeed. ``engine(*args)`` runs the forward pass (ZeRO-3 gathers
  parameters), ``engine.module`` is the plain ``nn.Module`` (architecture only), ``set_trainable`` freezes
  it for a phase.

Device-agnostic through ``deepspeed.accelerator.get_accelerator()``: gloo on CPU, NCCL on GPU. torch's AdamW
(``"torch_adam": true``; fused on GPU) instead of DeepSpeed's C++ / JIT-built Adam ops (a 2-minute build on
CPU, about a minute on GPU). On CPU: the shm comm op switched off (a 78 s build), one intra-op thread per rank
(oversubscription made ZeRO-3 36x slower on a 2-core box), fp16 refused (unsupported by CPU kernels).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib
import io
import itertools
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

# DeepSpeed warns "Setting accelerator to CPU" from every process that imports it when it finds no GPU;
# naming the accelerator it would pick anyway keeps one line per rank out of every log. A user's value wins.
if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
    os.environ["DS_ACCELERATOR"] = "cpu"

import deepspeed  # noqa: E402  (reads DS_ACCELERATOR at import)
import torch.distributed as dist  # noqa: E402
from deepspeed.accelerator import get_accelerator  # noqa: E402
from fusionrec.ports import free_port  # noqa: E402
from fusionrec.safe_pickle import ALLOWED_GLOBALS, check_pickles  # noqa: E402
from fusionrec.trainer.config import BatchPlan, DeepSpeedConfig, OptimConfig  # noqa: E402
from torch import nn  # noqa: E402

# ZeRO calls torch's deprecated all_gather_into_tensor / reduce_scatter_tensor aliases: a FutureWarning per
# rank (per step for the latter), nothing to act on.
warnings.filterwarnings(
    "ignore", message=r".*(all_gather_into_tensor|reduce_scatter_tensor). is deprecated", category=FutureWarning
)


def _allow_deepspeed_types() -> None:
    """Register the DeepSpeed classes named in ``safe_pickle.ALLOWED_GLOBALS`` with torch's weights-only
    unpickler (every torch.load is weights-only in a fusionrec process; see fusionrec/safe_pickle.py)."""
    classes = []
    for qualname in sorted(ALLOWED_GLOBALS):
        module, _, name = qualname.rpartition(".")
        classes.append(getattr(importlib.import_module(module), name))  # a rename in DeepSpeed fails here
    torch.serialization.add_safe_globals(classes)


_allow_deepspeed_types()

log = logging.getLogger(__name__)

_REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
_BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` wins; nested dicts merge key by key (so a user JSON can change one ZeRO knob)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def build_ds_config(
    cfg: DeepSpeedConfig,
    optim: OptimConfig | None,
    world_size: int,
    *,
    on_cpu: bool,
    user: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], BatchPlan]:
    """DeepSpeed's JSON from the typed config (+ a user JSON deep-merged on top), and the batch plan.

    ``optim=None`` builds a frozen (optimizer-less) engine's config. Raises ValueError on inconsistent batch
    arithmetic - including arithmetic changed by the user JSON - before DeepSpeed sees anything.
    """
    plan = cfg.resolve_batch(world_size)
    # auto: torch's AdamW, except beside an offloaded optimizer on a GPU (DeepSpeed's C++ CPU Adam is the fast
    # one there). On a GPU it is torch's fused kernel: no JIT build of DeepSpeed's FusedAdam (about a minute
    # of a few-minute GPU run). On CPU DeepSpeed's CPU Adam would cost a 2-minute op build.
    torch_adam = (on_cpu or not cfg.offload_optimizer) if cfg.torch_adam is None else cfg.torch_adam
    fused = torch_adam and not on_cpu and not cfg.offload_optimizer
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": not on_cpu}
    out: dict[str, Any] = {
        "train_batch_size": plan.train_batch_size,
        "train_micro_batch_size_per_gpu": plan.micro_batch_size,
        "gradient_accumulation_steps": plan.grad_accum,
        "gradient_clipping": optim.grad_clip if optim else 0.0,
        "steps_per_print": cfg.steps_per_print,
        "wall_clock_breakdown": False,
        # DeepSpeed's throughput timer runs every step (a device synchronize per start/stop on GPU) only to
        # print every steps_per_print; the Trainer measures throughput itself.
        "timers": {"throughput": {"enabled": False}},
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {"enabled": cfg.precision == "fp16"},
    }
    if optim is not None:
        out["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": optim.lr,
                "betas": list(optim.betas),
                "eps": optim.eps,
                "weight_decay": optim.weight_decay,
                "torch_adam": torch_adam,
                **({"fused": True} if fused else {}),  # DeepSpeed passes it on to torch.optim.AdamW
            },
        }
        if cfg.offload_optimizer and torch_adam:
            # DeepSpeed insists on its C++ CPU Adam with offload unless told otherwise.
            out["zero_force_ds_cpu_optimizer"] = False
    if user:
        out = deep_merge(out, user)
        plan = _check_user_batch(out, world_size)
    return out, plan


def _check_user_batch(ds: dict[str, Any], world_size: int) -> BatchPlan:
    values = {k: ds.get(k) for k in _BATCH_KEYS}
    for key, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"DeepSpeed JSON: {key} must be a positive int, got {value!r}")
    plan = BatchPlan(values[_BATCH_KEYS[1]], values[_BATCH_KEYS[2]], world_size)
    if plan.train_batch_size != values["train_batch_size"]:
        raise ValueError(
            f"inconsistent batch arithmetic in DeepSpeed JSON: train_batch_size={values['train_batch_size']} but "
            f"train_micro_batch_size_per_gpu={plan.micro_batch_size} x gradient_accumulation_steps="
            f"{plan.grad_accum} x world_size={world_size} = {plan.train_batch_size}"
        )
    return plan


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and norm weights (1-D tensors), as in torchtune/OLMo.

    Without weight decay the split would only cost time: ZeRO-1/2 run one grad-norm all-reduce and one
    parameter all-gather per group and step, so equal groups are merged into one.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if weight_decay == 0.0:
        return [{"params": params, "weight_decay": 0.0}] if params else []
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


class Engine:
    """A model wrapped by DeepSpeed. Call it like the model; ``module`` is the bare ``nn.Module``."""

    def __init__(self, name: str, ds_engine: Any, optim: OptimConfig | None, zero_stage: int) -> None:
        self.name = name
        self.optim = optim
        self.zero_stage = zero_stage
        self._ds = ds_engine
        self._grad_norm: torch.Tensor | float | None = None  # a device tensor: read on the host at log time
        self._local_clip = 0.0  # > 0: the strategy clips (stage 0), DeepSpeed does not
        self.trainable = optim is not None
        # What the run trains, fixed at prepare time (phases may freeze an engine later): a strict subset of
        # the parameters (a LoRA base stays frozen) means only those are the checkpoint's weights.
        params = list(ds_engine.module.named_parameters())
        trained = frozenset(n for n, p in params if p.requires_grad)
        self.trained_subset: frozenset[str] | None = (
            trained if trained and len(trained) < len(params) else None
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # A frozen engine runs its bare module: DeepSpeed's forward arms backward hooks whose epilogue
        # would run (on empty buckets) when another engine back-propagates through this one. ZeRO-3
        # parameter fetching lives in module hooks, so partitioned weights are still gathered.
        if self.trainable:
            return self._ds(*args, **kwargs)
        return self._ds.module(*args, **kwargs)

    @property
    def module(self) -> nn.Module:
        return self._ds.module

    @property
    def has_optimizer(self) -> bool:
        return self.optim is not None

    def train(self, mode: bool = True) -> Engine:
        self._ds.train(mode)
        return self

    def eval(self) -> Engine:
        return self.train(False)

    def set_trainable(self, trainable: bool) -> None:
        """Freeze/unfreeze for a phase: a frozen engine gets no gradients and is called as a bare module."""
        if trainable and not self.has_optimizer:
            raise ValueError(f"engine {self.name!r} was prepared without an optimizer; it cannot be trained")
        for p in self.module.parameters():
            p.requires_grad_(trainable)
        self.trainable = trainable

    def named_shapes(self) -> dict[str, list[int]]:
        """Full (unpartitioned) parameter shapes; ZeRO-3 keeps them in ``ds_shape``."""
        return {n: list(getattr(p, "ds_shape", p.shape)) for n, p in self.module.named_parameters()}

    @property
    def lr(self) -> float:
        return float(self._ds.get_lr()[0]) if self.has_optimizer else 0.0

    def set_base_lr(self, lr: float) -> None:
        """Replace the schedule's base lr (e.g. a phase that distils at a larger lr than the phases after
        it); the schedule's factor for the current step applies at once, and the next steps follow it."""
        sched = self._ds.lr_scheduler
        # Our LambdaLR only: a DeepSpeed scheduler from the user's JSON has no lr_lambdas to rescale.
        if not self.has_optimizer or not hasattr(sched, "lr_lambdas"):
            raise ValueError(f"engine {self.name!r} has no lr schedule whose base lr could be set")
        sched.base_lrs = [lr for _ in sched.base_lrs]
        for group, factor in zip(sched.optimizer.param_groups, sched.lr_lambdas, strict=True):
            group["lr"] = lr * factor(sched.last_epoch)

    @property
    def grad_norm(self) -> float | None:
        """Global gradient norm (before clipping) of the last optimizer step; None before any step. Reading it
        is a host sync on a GPU, which is why `step` keeps the tensor and the loop reads it only when it logs."""
        return None if self._grad_norm is None else float(self._grad_norm)

    @property
    def global_steps(self) -> int:
        return int(self._ds.global_steps)


class DeepspeedStrategy:
    """Process group + DeepSpeed engines for one training process. Create one per process."""

    def __init__(self, cfg: DeepSpeedConfig, threads_per_rank: int | None = None) -> None:
        self.accelerator = get_accelerator()
        self.on_cpu = self.accelerator.device_name() == "cpu"
        self.cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, self.accelerator))
        self._threads = threads_per_rank
        self._plan: BatchPlan | None = None
        self._user_json = self._read_user_json(cfg.user_json)
        self._check_precision()

    # ---------------------------------------------------------------- setup
    def _check_precision(self) -> None:
        if self.cfg.precision == "fp16" and (self.on_cpu or not self.accelerator.is_fp16_supported()):
            raise ValueError(
                f"deepspeed.precision='fp16' is not supported on the {self.accelerator.device_name()} "
                "accelerator (DeepSpeed's fp16 path needs GPU kernels); use 'bf16' or 'fp32'"
            )
        if self.cfg.precision == "bf16" and not self.accelerator.is_bf16_supported():
            raise ValueError(
                f"deepspeed.precision='bf16' is not supported on {self.accelerator.device_name()}"
            )

    @staticmethod
    def _read_user_json(path: str | None) -> dict[str, Any] | None:
        if path is None:
            return None
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ValueError(f"deepspeed.user_json: file not found: {path}") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"deepspeed.user_json: {path}:{err.lineno}: invalid JSON ({err.msg})") from None
        if not isinstance(data, dict):
            raise ValueError(f"deepspeed.user_json: {path} must hold a JSON object")
        return data

    def setup(self) -> None:
        """Join (or create) the process group. Idempotent.

        Works when torch.distributed is already up (Ray Train), under deepspeed/torchrun (env vars), and in a
        bare single process (env defaults to a 1-process group on a free 127.0.0.1 port, instead of
        DeepSpeed's mpi4py discovery).
        """
        if self.on_cpu:
            torch.set_num_threads(self._threads or int(os.environ.get("OMP_NUM_THREADS", "1")))
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # avoid a 78 s op build
        if not dist.is_initialized():
            own_port = "RANK" not in os.environ and "MASTER_PORT" not in os.environ
            if "RANK" not in os.environ:
                os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
                os.environ.setdefault("MASTER_PORT", str(free_port()))
            if not self.on_cpu:
                self.accelerator.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            self._init_distributed(retries=3 if own_port else 1)
        # Validate the batch arithmetic once the world size is known: before any engine or step.
        _, self._plan = build_ds_config(
            self.cfg, None, self.world_size, on_cpu=self.on_cpu, user=self._user_json
        )

    def _init_distributed(self, retries: int) -> None:
        """init_distributed; a free port we picked ourselves can be taken by another process before we bind
        it (a race, not a user error): then retry on a new port. Ports given by a launcher are never changed."""
        for attempt in range(retries):
            try:
                deepspeed.init_distributed(
                    dist_backend=self.accelerator.communication_backend_name(),
                    timeout=timedelta(seconds=self.cfg.dist_timeout_s),
                )
                return
            except RuntimeError as err:  # DistNetworkError is a RuntimeError
                if "EADDRINUSE" not in str(err) or attempt == retries - 1:
                    raise
                os.environ["MASTER_PORT"] = str(free_port())

    # ---------------------------------------------------------------- world info
    @property
    def rank(self) -> int:
        return dist.get_rank() if dist.is_initialized() else 0

    @property
    def world_size(self) -> int:
        return dist.get_world_size() if dist.is_initialized() else 1

    @property
    def local_rank(self) -> int:
        return int(os.environ.get("LOCAL_RANK", "0"))

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return torch.device(self.accelerator.current_device_name())

    @property
    def batch_plan(self) -> BatchPlan:
        if self._plan is None:
            raise RuntimeError("call strategy.setup() first")
        return self._plan

    def ds_config(self, optim: OptimConfig | None) -> dict[str, Any]:
        cfg, _ = build_ds_config(self.cfg, optim, self.world_size, on_cpu=self.on_cpu, user=self._user_json)
        return cfg

    # ---------------------------------------------------------------- engines
    def prepare(self, model: nn.Module, optim: OptimConfig | None, *, name: str = "model") -> Engine:
        """Wrap ``model`` in a DeepSpeed engine. ``optim=None``: frozen (no optimizer, eval mode)."""
        if self._plan is None:
            self.setup()
        ds_cfg = self.ds_config(optim)
        kwargs: dict[str, Any] = {"model": model, "config": ds_cfg}
        if optim is None:
            model.requires_grad_(False)
        else:
            kwargs["model_parameters"] = _param_groups(model, optim.weight_decay)
            if "scheduler" not in ds_cfg:
                kwargs["lr_scheduler"] = _lambda_scheduler(optim)
        stage = int(ds_cfg["zero_optimization"].get("stage", 0))
        if optim is None and stage in (1, 2):
            raise ValueError(
                f"engine {name!r}: a frozen model (optim=None) cannot be a ZeRO-{stage} engine (DeepSpeed "
                "refuses it; ZeRO-1/2 shard optimizer state and gradients, which a frozen model has none of): "
                "keep a plain frozen replica on strategy.device below ZeRO-3"
            )
        clip = _take_over_clipping(ds_cfg, stage)
        _size_reduce_bucket(ds_cfg["zero_optimization"], model, stage)
        ds_engine, *_ = deepspeed.initialize(**kwargs)
        engine = Engine(name, ds_engine, optim, stage)
        engine._local_clip = clip
        if optim is None:
            engine.eval()
        return engine

    def backward(self, loss: torch.Tensor, engine: Engine) -> None:
        """Back-propagate one micro-batch loss; DeepSpeed divides by grad_accum and syncs at the boundary."""
        engine._ds.backward(loss)

    def is_boundary(self, engine: Engine) -> bool:
        """True when the current micro-batch completes an accumulation cycle (the next step() steps)."""
        return bool(engine._ds.is_gradient_accumulation_boundary())

    def step(self, engine: Engine) -> bool:
        """Optimizer + scheduler step on accumulation boundaries (no-op otherwise). Returns whether it stepped."""
        ds = engine._ds
        boundary = ds.is_gradient_accumulation_boundary()
        if boundary and engine.zero_stage == 0:  # grads are already all-reduced here
            engine._grad_norm = _local_grad_norm(engine.module, engine._local_clip)
        ds.step()
        if boundary and engine.zero_stage > 0:
            norm = ds.get_global_grad_norm()
            engine._grad_norm = norm
        return bool(boundary)

    # ---------------------------------------------------------------- checkpoints
    def save(self, engine: Engine, ckpt_dir: Path) -> None:
        """Model + optimizer + scheduler shards of ``engine`` into ``ckpt_dir/<engine.name>/`` (all ranks)."""
        engine._ds.save_checkpoint(str(ckpt_dir), tag=engine.name, client_state={}, save_latest=False)

    def load(self, engine: Engine, ckpt_dir: Path) -> None:
        """Restore what :meth:`save` wrote (all ranks). Raises ValueError when DeepSpeed finds nothing, and
        (safe_pickle.UnsafePickleError, a ValueError) on a file that is not plain checkpoint data."""
        check_pickles(Path(ckpt_dir) / engine.name)
        path, _ = engine._ds.load_checkpoint(
            str(ckpt_dir),
            tag=engine.name,
            load_optimizer_states=engine.has_optimizer,
            load_lr_scheduler_states=engine.has_optimizer,
        )
        if path is None:
            raise ValueError(f"checkpoint {ckpt_dir}: no DeepSpeed state for engine {engine.name!r}")

    def load_resharded(self, engine: Engine, ckpt_dir: Path, saved_world: int, scratch: Path) -> None:
        """Restore what :meth:`save` wrote with ``saved_world`` data-parallel ranks on this (different) world.

        Collective (all ranks). DeepSpeed 0.19.8's ``load_checkpoint`` refuses partitioned optimizer state at
        a new data-parallel size, and its ``elastic_checkpoint`` path can only shrink (it indexes the saved
        partitions by the new rank). Its universal checkpoint re-partitions both ways for ZeRO-1/2/3: rank 0
        converts ``ckpt_dir/<engine>`` with ``ds_to_universal`` into ``scratch`` (fp32 weights and Adam moments
        per parameter, unpartitioned), every rank loads it with ``load_universal``, then ``scratch`` is removed.
        Stage 0 without bf16 keeps the whole optimizer in ``mp_rank_00_model_states.pt``, which DeepSpeed
        loads at any size. Raises ValueError naming both sizes and the stage when the conversion fails.
        """
        tag_dir = Path(ckpt_dir) / engine.name
        check_pickles(tag_dir)  # every rank, before rank 0's converter reads a file
        if not any(tag_dir.glob("*optim_states.pt")):  # nothing partitioned: the plain load is exact
            self.load(engine, ckpt_dir)
            return
        error = self._convert_universal(tag_dir, scratch / engine.name) if self.is_rank0 else None
        error = self.broadcast_object(error)
        if error is not None:
            raise ValueError(
                f"checkpoint {ckpt_dir}: engine {engine.name!r} (ZeRO-{engine.zero_stage}) saved by {saved_world} "
                f"ranks cannot be re-partitioned for {self.world_size} ranks: {error}"
            )
        ds = engine._ds
        ds._config.load_universal_checkpoint = True  # read by load_checkpoint only; reset right after
        try:
            self.load(engine, scratch)
        finally:
            ds._config.load_universal_checkpoint = False
            self.barrier()  # every rank has read scratch before rank 0 deletes it
            if self.is_rank0:
                shutil.rmtree(scratch / engine.name, ignore_errors=True)

    @staticmethod
    def _convert_universal(tag_dir: Path, out: Path) -> str | None:
        """ds_to_universal of one engine folder into ``out`` (single process); None or the error text."""
        from deepspeed.checkpoint import ds_to_universal

        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        args = argparse.Namespace(
            input_folder=str(tag_dir),
            output_folder=str(out),
            num_extract_workers=1,  # > 1 forks a process pool; one process keeps the ranks' CPU budget
            num_merge_workers=1,
            keep_temp_folder=False,
            strict=True,
            inject_missing_state=True,  # our client state has no Megatron-style universal_checkpoint_info
        )
        chatter = io.StringIO()
        try:
            with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
                ds_to_universal.main(args)
        except Exception as err:  # noqa: BLE001 - any converter failure becomes one clear message
            shutil.rmtree(out, ignore_errors=True)
            return f"{type(err).__name__}: {err}"
        return None

    def full_optimizer_state(self, engine: Engine, key: str) -> dict[str, torch.Tensor]:
        """Unpartitioned optimizer state ``key`` (e.g. ``"exp_avg"``) per parameter name, on every rank.

        Collective under ZeRO (the partitions are all-reduced). Parameters without that state are left out;
        call it after the first optimizer step or a checkpoint load (a fresh ZeRO optimizer holds none).
        """
        from deepspeed.utils import safe_get_full_optimizer_state

        out = {}
        optimizer = getattr(engine._ds.optimizer, "optimizer", engine._ds.optimizer)
        for name, p in engine.module.named_parameters():
            if engine.zero_stage == 0:
                t = optimizer.state.get(p, {}).get(key)
            else:
                t = safe_get_full_optimizer_state(p, key)
            if t is not None:
                out[name] = t.detach().to("cpu", copy=True)
        return out

    def consolidated_weights(self, engine: Engine) -> tuple[dict[str, torch.Tensor] | None, str]:
        """(weights, contents) for the checkpoint's ``weights/<engine>.safetensors``; collective.

        contents ``"full"``: every parameter and buffer; ``"trainable"``: only the parameters the run trains
        (the engine had frozen ones at prepare time, e.g. a LoRA base its config rebuilds). Parameters kept
        in bf16 come from DeepSpeed's fp32 master copy, as DeepSpeed's own consolidation does. The CPU copy
        is made on rank 0 only (None elsewhere).
        """
        from deepspeed.utils import safe_get_full_fp32_param

        module, subset = engine.module, engine.trained_subset
        params = dict(module.named_parameters())
        names = sorted(subset) if subset is not None else sorted(params)
        master = engine.zero_stage > 0 and any(params[n].dtype != torch.float32 for n in names)
        if master:  # collective per parameter, in the same order on every rank
            values = {n: safe_get_full_fp32_param(params[n]) for n in names}
        else:
            values = self._gathered(engine, [params[n] for n in names], names)
        if not self.is_rank0:
            return None, "trainable" if subset is not None else "full"
        out = {n: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
               for n, v in values.items()}  # fmt: skip
        if subset is not None:
            return out, "trainable"
        name_of = {
            id(p): n for n, p in params.items()
        }  # tied parameters: one object, several state-dict keys
        for key, value in module.state_dict(keep_vars=True).items():  # buffers and tied aliases
            if key not in out:
                alias = name_of.get(id(value))
                out[key] = out[alias].clone() if alias else value.detach().to("cpu", copy=True).contiguous()
        return out, "full"

    def _gathered(
        self, engine: Engine, tensors: list[torch.Tensor], names: list[str]
    ) -> dict[str, torch.Tensor]:
        ctx = (
            deepspeed.zero.GatheredParameters(tensors, modifier_rank=None)
            if engine.zero_stage == 3
            else contextlib.nullcontext()
        )
        with ctx:
            if not self.is_rank0:
                return {}
            return {n: t.detach().to("cpu", copy=True) for n, t in zip(names, tensors, strict=True)}

    def full_state_dict(self, engine: Engine) -> dict[str, torch.Tensor]:
        """Unpartitioned CPU copy of the module's state dict on every rank (gathers ZeRO-3 shards)."""
        module = engine.module
        if engine.zero_stage == 3:
            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
        return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}

    @staticmethod
    def consolidated_state_dict(ckpt_dir: Path, name: str) -> dict[str, torch.Tensor]:
        """fp32 state dict from ``ckpt_dir/<name>`` in-process, any ZeRO stage, no process group needed.

        ZeRO 1-3 go through DeepSpeed's zero_to_fp32 reader; stage 0 stores the whole module in
        ``mp_rank_00_model_states.pt``. (zero_to_fp32 --safe_serialization fails on T5's tied embeddings;
        callers load this dict into the model and use save_pretrained, which handles ties.)
        """
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        tag_dir = Path(ckpt_dir) / name
        check_pickles(tag_dir)
        if any(tag_dir.glob("*optim_states.pt")) and any(tag_dir.glob("zero_pp_rank_*")):
            return dict(get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=name))
        model_file = tag_dir / "mp_rank_00_model_states.pt"
        if not model_file.exists():
            raise ValueError(f"checkpoint {ckpt_dir}: no model states for {name!r} (expected {model_file})")
        state = torch.load(model_file, map_location="cpu", weights_only=True)
        return {k: v.float() if v.is_floating_point() else v for k, v in state["module"].items()}

    # ---------------------------------------------------------------- collectives
    def all_reduce(self, value: torch.Tensor | float, op: str = "mean") -> torch.Tensor:
        """Reduce a tensor (or float) over ranks; ``op`` in mean/sum/max/min. Returns a new CPU tensor."""
        return self.all_reduce_async(value, op)()

    def all_reduce_async(self, value: torch.Tensor | float, op: str = "mean") -> Callable[[], torch.Tensor]:
        """Start :meth:`all_reduce`; the returned function waits and returns its result.

        Every rank must start it at the same point of its collective sequence; local work (a forward pass
        without collectives) can run before the wait and hides the round trip.
        """
        t = torch.as_tensor(value, dtype=torch.float64).detach().clone().to(self._comm_device)
        work = None
        if self.world_size > 1:
            work = dist.all_reduce(t, op=_REDUCE_OPS["sum" if op == "mean" else op], async_op=True)

        def wait() -> torch.Tensor:
            if work is not None:
                work.wait()
            return (t / self.world_size if op == "mean" else t).cpu()

        return wait

    def all_gather_object(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    @property
    def _comm_device(self) -> torch.device:
        # gloo reduces CPU tensors; NCCL needs them on the rank's device.
        return torch.device("cpu") if self.on_cpu else self.device

    def to_device(self, batch: Any) -> Any:
        """Move a (nested) batch of tensors to this rank's device (no-op on CPU)."""
        if self.on_cpu:
            return batch
        return _map_tensors(batch, lambda t: t.to(self.device, non_blocking=True))

    def teardown(self) -> None:
        """Leave the process group in order; every launcher's ranks end here (docs/operations.md).

        The ranks first meet on the rendezvous store, so none destroys its end of a connection that a peer
        still uses, then each destroys its group. Rank 0 hosts that store under torchrun, the deepspeed
        launcher and multinode.sh, so it destroys last, once every other rank said it is done with the store.
        A peer that already crashed or was killed costs at most ``_LEAVE_TIMEOUT_S`` and a warning, never an
        error: the work of this rank is finished and saved by then.
        """
        if not dist.is_initialized():
            return
        if self.world_size > 1:
            timeout = min(_LEAVE_TIMEOUT_S, float(self.cfg.dist_timeout_s))
            leave_in_order(dist.distributed_c10d._get_default_store(), self.rank, self.world_size, timeout)
        if deepspeed.comm.is_initialized():
            # DeepSpeed's own teardown also drops the groups it cached (data / sequence parallel): torch's
            # alone left them stale, and a second run in the same process failed in deepspeed.initialize.
            deepspeed.comm.destroy_process_group()
        else:
            dist.destroy_process_group()


_LEAVE_TIMEOUT_S = 60.0
_LEAVES = itertools.count()  # one key space per teardown: the same store can outlive a process group


def resolve_precision(precision: str, accelerator: Any) -> str:
    """``"auto"`` -> bf16 where it is native, else fp32; any other value unchanged. On a CPU without bf16
    kernels (AVX2 only) DeepSpeed's bf16 still runs, emulated: an IDGenRec CPU step took 2.40 s in bf16 vs
    0.30-0.35 s in fp32 on a 2-core AVX2 EPYC (bench precision), while bf16 is the faster one on AMX (bench
    idgenrec_beauty)."""
    if precision != "auto":
        return precision
    if accelerator.device_name() == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "bf16" if accelerator.is_bf16_supported() else "fp32"


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN has bf16 kernels on this CPU (it needs AVX512-BF16 or AMX; AVX2 CPUs emulate bf16)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without oneDNN: no bf16 kernels either
        return False


def leave_in_order(store: Any, rank: int, world_size: int, timeout_s: float) -> bool:
    """Store barrier before a group is destroyed: all ranks arrive, then ranks > 0 report that they are done
    with the store and rank 0 (its host) waits for them. False, with a warning, when a peer never came."""
    key = f"fusionrec/leave/{next(_LEAVES)}"
    deadline = time.monotonic() + timeout_s
    try:
        store.add(f"{key}/arrived", 1)
        arrived = _wait_count(store, f"{key}/arrived", world_size, deadline)
        store.add(f"{key}/left", 1)
        if rank == 0 and arrived:
            arrived = _wait_count(store, f"{key}/left", world_size, deadline)
    except Exception as err:  # noqa: BLE001 - the store's host is gone: nothing left to wait for
        log.warning("rank %d: leaving the process group without its peers (store: %s)", rank, err)
        return False
    if not arrived:
        log.warning(
            "rank %d: some peers did not reach teardown within %.0f s; leaving anyway", rank, timeout_s
        )
    return arrived


def _wait_count(store: Any, key: str, target: int, deadline: float) -> bool:
    while int(store.add(key, 0)) < target:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _lambda_scheduler(optim: OptimConfig):  # -> Callable[[Optimizer], LambdaLR]
    def factor(step: int) -> float:  # a plain function: LambdaLR.state_dict skips it
        return optim.lr_factor(step)

    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


_DS_REDUCE_BUCKET = 500_000_000  # DeepSpeed's default reduce_bucket_size (elements)


def _size_reduce_bucket(zero: dict[str, Any], model: nn.Module, stage: int) -> None:
    """reduce_bucket_size = the model's parameter count when that is below DeepSpeed's default (5e8).

    ZeRO-1/2 allocate a fresh gradient bucket of reduce_bucket_size elements at every backward (freed in
    the epilogue), ZeRO-3 keeps one for the run: with the default that is a 2 GB fp32 buffer even for a
    tiny model (device memory on GPU; on CPU the step time did not measurably change). A bucket the size of
    the model holds every gradient at once, so the reduction is the same single bucket as with the default.
    A value from the user's JSON is kept.
    """
    if stage == 0 or "reduce_bucket_size" in zero:
        return
    numel = sum(int(getattr(p, "ds_numel", p.numel())) for p in model.parameters())
    zero["reduce_bucket_size"] = max(1, min(_DS_REDUCE_BUCKET, numel))


def _take_over_clipping(ds_cfg: dict[str, Any], stage: int) -> float:
    """Stage 0 in fp32: return the clip value and switch DeepSpeed's clipping off, so that ``step`` clips.

    DeepSpeed's stage-0 clipping computes the norm parameter by parameter and then all-reduces it over the
    data-parallel group (an MoE average) although the gradients are already all-reduced and identical on
    every rank: one extra collective per step. torch's clip_grad_norm_ on the same gradients is the same
    clipping, and its norm is the one we log. Other stages/precisions clip inside DeepSpeed's optimizer.
    """
    precision_on = ds_cfg.get("bf16", {}).get("enabled") or ds_cfg.get("fp16", {}).get("enabled")
    if stage != 0 or precision_on or "optimizer" not in ds_cfg:
        return 0.0
    clip = float(ds_cfg.get("gradient_clipping", 0.0))
    ds_cfg["gradient_clipping"] = 0.0
    return clip


def _local_grad_norm(module: nn.Module, clip: float = 0.0) -> torch.Tensor | float:
    """Norm of the (already all-reduced) gradients, a tensor on their device (no host sync); clips them to
    ``clip`` in place when ``clip > 0``."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.grad is not None], clip)
    return torch.nn.utils.get_total_norm(grads)


def _map_tensors(obj: Any, fn: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def iter_named_engines(engines: Mapping[str, Engine]) -> Iterator[tuple[str, Engine]]:
    """Engines in a stable (sorted) order, so every rank issues collectives in the same order."""
    return iter(sorted(engines.items()))
