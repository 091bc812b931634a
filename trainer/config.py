"""Typed configuration of the training engine: optimiser, DeepSpeed, checkpointing, the loop.

Each component receives only its own sub-config. Every dataclass validates itself in ``__post_init__``
(``ValueError`` naming the field and value), and ``TrainConfig.from_dict`` rejects unknown keys with their
full dotted path, so a typo in a TOML file or a resumed checkpoint's config fails before any step.

The batch arithmetic (micro-batch x grad-accumulation x world size) lives in ONE place:
:meth:`DeepSpeedConfig.resolve_batch`, used by the strategy both to write DeepSpeed's JSON and to check a
user-supplied JSON before ``deepspeed.initialize`` ever runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Precision = Literal["fp32", "bf16", "fp16", "auto"]
_PRECISIONS = ("fp32", "bf16", "fp16", "auto")


@dataclass
class OptimConfig:
    """AdamW + warmup/linear-decay schedule + clipping for one engine.

    ``total_steps`` counts optimizer steps (not micro-batches). ``None`` keeps the lr constant after warmup,
    which IDGenRec's phase-by-phase training wants when the phase length is not known in advance.
    """

    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    total_steps: int | None = None
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # TOML/JSON give lists
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two values in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise ValueError(f"optim.eps must be > 0, got {self.eps}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.total_steps is not None and self.total_steps < max(1, self.warmup_steps):
            raise ValueError(
                f"optim.total_steps ({self.total_steps}) must be >= max(1, warmup_steps={self.warmup_steps})"
            )
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip < 0:
            raise ValueError(f"optim.grad_clip must be >= 0 (0 disables clipping), got {self.grad_clip}")

    def lr_factor(self, step: int) -> float:
        """Multiplier of ``lr`` for optimizer step ``step`` (0-based): linear warmup, then linear decay.

        Warmup uses (step+1)/warmup so the very first step already moves the weights (HF's step/warmup
        wastes step 0 at lr=0).
        """
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.total_steps is None:
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return 1.0 - (1.0 - self.min_lr_ratio) * progress


@dataclass(frozen=True)
class BatchPlan:
    """The resolved batch arithmetic: train_batch = micro x accum x world."""

    micro_batch_size: int
    grad_accum: int
    world_size: int

    @property
    def train_batch_size(self) -> int:
        return self.micro_batch_size * self.grad_accum * self.world_size


@dataclass
class DeepSpeedConfig:
    """How DeepSpeed runs: ZeRO stage, offload, precision, batch arithmetic, an optional user JSON.

    ``global_batch_size`` is optional; when set it must equal micro x accum x world (checked in
    :meth:`resolve_batch`, before any step). ``user_json`` is a path to a DeepSpeed JSON whose keys override
    the generated ones (deep-merged); its batch keys are checked against the same arithmetic.
    ``precision = "auto"``: bf16 where the hardware computes it natively (a GPU with bf16; a CPU whose oneDNN has
    bf16 kernels, i.e. AVX512-BF16 or AMX), else fp32; the strategy resolves it once (`resolve_precision`) and
    the run's ``run.json`` and summary record what it chose.
    ``torch_adam=None`` means "auto": torch's AdamW (on a GPU its fused kernel, no JIT-built FusedAdam; on
    CPU no 2-minute C++ op build), except DeepSpeed's CPU Adam for an offloaded optimizer on a GPU machine.
    """

    zero_stage: int = 1
    offload_optimizer: bool = False
    precision: Precision = "fp32"
    micro_batch_size: int = 8
    grad_accum: int = 1
    global_batch_size: int | None = None
    user_json: str | None = None
    torch_adam: bool | None = None
    dist_timeout_s: int = 600
    steps_per_print: int = 1_000_000  # DeepSpeed's own console logging; our callbacks log instead

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"deepspeed.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.precision not in _PRECISIONS:
            raise ValueError(f"deepspeed.precision must be one of {_PRECISIONS}, got {self.precision!r}")
        if self.micro_batch_size < 1:
            raise ValueError(f"deepspeed.micro_batch_size must be >= 1, got {self.micro_batch_size}")
        if self.grad_accum < 1:
            raise ValueError(f"deepspeed.grad_accum must be >= 1, got {self.grad_accum}")
        if self.global_batch_size is not None and self.global_batch_size < 1:
            raise ValueError(f"deepspeed.global_batch_size must be >= 1, got {self.global_batch_size}")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("deepspeed.offload_optimizer needs zero_stage >= 1 (got zero_stage=0)")
        if self.dist_timeout_s < 1:
            raise ValueError(f"deepspeed.dist_timeout_s must be >= 1, got {self.dist_timeout_s}")

    def resolve_batch(self, world_size: int) -> BatchPlan:
        """The one place where micro x accum x world is checked. Raises ValueError on inconsistency."""
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        plan = BatchPlan(self.micro_batch_size, self.grad_accum, world_size)
        if self.global_batch_size is not None and self.global_batch_size != plan.train_batch_size:
            raise ValueError(
                f"inconsistent batch arithmetic: deepspeed.global_batch_size={self.global_batch_size} but "
                f"micro_batch_size={self.micro_batch_size} x grad_accum={self.grad_accum} x "
                f"world_size={world_size} = {plan.train_batch_size}"
            )
        return plan


@dataclass
class CheckpointConfig:
    """Where and how often to checkpoint; ``resume``: None (fresh), "auto" (newest complete) or a path."""

    dir: str = "checkpoints"
    every_steps: int = 0
    keep_last: int = 3
    resume: str | None = None
    save_at_end: bool = True

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise ValueError(f"checkpoint.every_steps must be >= 0 (0 = never), got {self.every_steps}")
        if self.keep_last < 1:
            raise ValueError(f"checkpoint.keep_last must be >= 1, got {self.keep_last}")
        if self.resume == "":
            raise ValueError('checkpoint.resume must be None, "auto" or a checkpoint path, got ""')


@dataclass
class TrainConfig:
    """The loop: how long, how often to log/validate, where the run lives, plus the engine sub-configs.

    ``max_steps`` counts optimizer steps over the whole run (all phases); a phase's own length comes from the
    TrainModule's plan. ``max_minutes`` (0 = none) is a wall-clock training budget over the whole run, resumes
    included: the ranks agree at every ``log_every`` boundary whether it is spent, and stop together there. ``log_every`` controls how often losses are all-reduced (one collective per log
    interval, not per step, to keep the step fast).
    """

    run_dir: str = "runs/default"
    max_steps: int = 100
    max_minutes: float = 0.0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0
    tensorboard: bool = True
    progress: bool = True
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"train.max_steps must be >= 1, got {self.max_steps}")
        if self.max_minutes < 0:
            raise ValueError(f"train.max_minutes must be >= 0 (0 = no budget), got {self.max_minutes}")
        if self.log_every < 1:
            raise ValueError(f"train.log_every must be >= 1, got {self.log_every}")
        if self.eval_every < 0:
            raise ValueError(f"train.eval_every must be >= 0 (0 = never), got {self.eval_every}")
        if not self.run_dir:
            raise ValueError("train.run_dir must be a non-empty path")

    @classmethod
    def from_dict(cls, data: dict[str, Any], prefix: str = "train") -> TrainConfig:
        """Build from nested dicts (TOML/JSON), rejecting unknown keys with their dotted path."""
        return _from_dict(cls, data, prefix)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{prefix}: expected a table/dict, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key(s): {', '.join(f'{prefix}.{k}' for k in unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        sub = _SUBCONFIGS.get((cls, name))
        kwargs[name] = _from_dict(sub, value, f"{prefix}.{name}") if sub else value
    return cls(**kwargs)


_SUBCONFIGS: dict[tuple[type, str], type] = {
    (TrainConfig, "deepspeed"): DeepSpeedConfig,
    (TrainConfig, "optim"): OptimConfig,
    (TrainConfig, "checkpoint"): CheckpointConfig,
}
