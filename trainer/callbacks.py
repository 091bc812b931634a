"""Trainer callbacks: TensorBoard scalars, tqdm progress, periodic validation, checkpointing, history.

Callbacks do the side work of the loop; every hook receives the Trainer. Hooks are called on every rank
(collectives inside a hook, e.g. validation or checkpointing, need all ranks); writers act on rank 0 only.
Order matters and is the list order: put ValidationCallback before TensorBoard/History so validation
metrics logged at a step are written at that step, and CheckpointCallback last.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fusionrec.trainer.loop import Trainer
    from fusionrec.trainer.module_base import Phase


class Callback:
    """No-op base: override the hooks you need."""

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_phase_start(self, trainer: Trainer, phase: Phase) -> None: ...

    def on_step_end(self, trainer: Trainer, phase: Phase) -> None: ...

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...

    def on_validation(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...

    def on_epoch_end(self, trainer: Trainer, phase: Phase) -> None: ...

    def on_phase_end(self, trainer: Trainer, phase: Phase) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...


class HistoryCallback(Callback):
    """Keeps every logged metrics dict (with its step) in memory; on all ranks (metrics are global)."""

    def __init__(self) -> None:
        self.logs: list[dict[str, float]] = []

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.logs.append({"step": trainer.state.step, **metrics})

    def on_validation(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.logs.append({"step": trainer.state.step, **metrics})


class TensorBoardCallback(Callback):
    """Scalars (loss, lr, grad-norm, samples/s, tokens/s, validation) to RUN/tensorboard on rank 0."""

    def __init__(self, log_dir: str | Path | None = None) -> None:
        self.log_dir = log_dir
        self.writer: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.strategy.is_rank0:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.log_dir or trainer.run_dir / "tensorboard"))

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, global_step=trainer.state.step)

    on_validation = on_log

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class ProgressCallback(Callback):
    """A tqdm bar over optimizer steps on rank 0, showing the latest global loss.

    Its total is the phase plan's length, not the ``max_steps`` ceiling: step phases count exactly, epoch
    phases as epochs x optimizer steps per epoch of their loader (known once a phase built it; phases not
    started yet are estimated from the last loader of the same engine, else the current one). The total is
    refined at every phase start.
    """

    def __init__(self) -> None:
        self.bar: Any = None
        self._per_epoch: dict[str, int] = {}  # engine -> optimizer steps per epoch of its last loader

    def on_phase_start(self, trainer: Trainer, phase: Phase) -> None:
        if not trainer.strategy.is_rank0:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=0, initial=trainer.state.step, desc="train", unit="step", delay=0.1)
        micro = len(trainer.train_loader) if hasattr(trainer.train_loader, "__len__") else 0
        if phase.epochs is not None and micro:
            self._per_epoch[phase.engine] = max(1, micro // trainer.strategy.batch_plan.grad_accum)
        self.bar.total = planned_steps(trainer, self._per_epoch, phase.engine)
        self.bar.refresh()

    def on_step_end(self, trainer: Trainer, phase: Phase) -> None:
        if self.bar is not None:
            self.bar.update(trainer.state.step - self.bar.n)

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            shown = {k.split("/", 1)[-1]: f"{v:.4g}" for k, v in metrics.items() if k.endswith("loss")}
            self.bar.set_postfix(shown, refresh=False)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def planned_steps(trainer: Trainer, per_epoch: dict[str, int], current_engine: str) -> int:
    """Optimizer steps of the whole plan (capped by ``max_steps``) as known at the current phase's start."""
    state = trainer.state
    total = state.step - state.phase_step  # steps of the finished phases
    for phase in trainer.phases[state.phase_index :]:
        if phase.steps is not None:
            total += phase.steps
            continue
        estimate = per_epoch.get(phase.engine) or per_epoch.get(current_engine)
        if estimate is None:
            return trainer.cfg.max_steps
        total += phase.epochs * estimate
    return min(total, trainer.cfg.max_steps)


class ValidationCallback(Callback):
    """Runs ``trainer.validate()`` every ``every`` steps (and at the end); emits ``on_validation``."""

    def __init__(self, every: int, at_end: bool = True) -> None:
        if every < 0:
            raise ValueError(f"validation every must be >= 0, got {every}")
        self.every = every
        self.at_end = at_end
        self.last_step = -1

    def on_step_end(self, trainer: Trainer, phase: Phase) -> None:
        if self.every and trainer.state.step % self.every == 0:
            self._run(trainer)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.at_end and self.last_step != trainer.state.step:
            self._run(trainer)

    def _run(self, trainer: Trainer) -> None:
        metrics = trainer.validate()
        self.last_step = trainer.state.step
        for cb in trainer.callbacks:
            cb.on_validation(trainer, metrics)


class CheckpointCallback(Callback):
    """Saves every ``checkpoint.every_steps`` steps, at phase ends, and at the end of fit (if configured)."""

    def __init__(self) -> None:
        self.last_saved = -1

    def on_step_end(self, trainer: Trainer, phase: Phase) -> None:
        every = trainer.cfg.checkpoint.every_steps
        if every and trainer.state.step % every == 0:
            self._save(trainer)

    def on_phase_end(self, trainer: Trainer, phase: Phase) -> None:
        # Phase boundaries are natural resume points (IDGenRec rebuilds its ID table there).
        if trainer.cfg.checkpoint.every_steps:
            self._save(trainer, force=True)

    def on_fit_end(self, trainer: Trainer) -> None:
        if trainer.cfg.checkpoint.save_at_end:
            self._save(trainer)

    def _save(self, trainer: Trainer, force: bool = False) -> None:
        from fusionrec.trainer.checkpoint import save_checkpoint

        if self.last_saved == trainer.state.step and not force:
            return
        save_checkpoint(trainer)
        self.last_saved = trainer.state.step


def default_callbacks(trainer_cfg: Any, with_validation: bool = False) -> list[Callback]:
    """The standard set, in the right order, from a TrainConfig."""
    cbs: list[Callback] = []
    if with_validation and trainer_cfg.eval_every:
        cbs.append(ValidationCallback(trainer_cfg.eval_every))
    if trainer_cfg.tensorboard:
        cbs.append(TensorBoardCallback())
    if trainer_cfg.progress:
        cbs.append(ProgressCallback())
    cbs.append(CheckpointCallback())
    return cbs
