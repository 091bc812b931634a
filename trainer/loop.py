"""The generic Trainer (OLMo-core style): ``Trainer(cfg, strategy, module, train_loader, callbacks).fit()``.

``fit`` reads as a list of named calls: set up engines, restore a checkpoint, then walk the module's phase
plan; each phase runs epochs of micro-batches; every accumulation boundary is an optimizer step followed by
logging, validation and checkpoint hooks. Everything rank-dependent goes through the strategy.

Contracts worth knowing:

* Logged losses are global means: the loop keeps local sums and counts per key and all-reduces them once
  per ``log_every`` steps (one collective, not one per micro-batch).
* Every rank must take the same number of micro-batches per epoch (ZeRO collectives would hang
  otherwise). The loop checks agreement with one tiny all-reduce per micro-batch; when a rank runs out
  first, the other ranks' leftover batches are counted in ``state.skipped["uneven_tail_batches"]`` and
  reported, never silently dropped. The check is started before the forward pass and awaited before
  backward, so its round trip hides behind the forward - only when no forward can run a collective
  (no ZeRO-3 engine, whose forward gathers parameters, and a module without ``collective_forward = True``;
  a rank that ran out would otherwise leave those collectives unmatched). A forward whose batch turns
  out to be in the uneven tail is discarded without backward.
* A loader may expose ``state_dict()/load_state_dict()`` (data_pipeline's ShardLoader does); its per-rank
  state goes into every checkpoint and is restored after ``on_phase_start`` (which may rebuild the loader)
  on the same world size. A loader with ``set_epoch(e)`` gets ``e`` = number of exhausted passes so far
  after each pass (one ``iter()`` = the rest of one epoch).
* ``max_minutes`` is checked with one scalar all-reduce (max) per ``log_every`` steps: the ranks' clocks
  differ, so a rank-local check would let one rank stop while the others wait in a collective. Training
  seconds (``state.train_seconds``: the loop's wall time, checkpoint saves and in-loop validation included)
  are saved in every checkpoint, so a resumed run spends only what is left of the budget.
* At the end of an epoch-based phase a partial accumulation cycle (micro-batches per epoch not a multiple
  of grad_accum) stays in that engine's gradient buffers and joins its next step; the count is reported
  in ``state.skipped["carried_partial_accumulation"]``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fusionrec.trainer.callbacks import Callback
from fusionrec.trainer.config import TrainConfig
from fusionrec.trainer.module_base import Phase, TrainModule
from fusionrec.trainer.strategy import DeepspeedStrategy, Engine

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Progress counters; saved in every checkpoint (plain ints/dicts, weights_only-loadable)."""

    step: int = 0  # optimizer steps over the whole run
    phase_index: int = 0
    phase_step: int = 0  # optimizer steps in the current phase
    phase_epoch: int = 0  # completed epochs of the current phase
    epochs_done: int = 0  # exhausted loader passes over the whole run (drives loader.set_epoch)
    samples_seen: int = 0  # global (all ranks)
    tokens_seen: int = 0
    train_seconds: float = 0.0  # wall seconds inside fit() over all runs (the max_minutes budget)
    skipped: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, skipped=dict(self.skipped))


class Trainer:
    """Runs a TrainModule's phase plan on DeepSpeed engines, with callbacks for the side work."""

    def __init__(
        self,
        cfg: TrainConfig,
        strategy: DeepspeedStrategy,
        module: TrainModule,
        train_loader: Iterable[Any],
        callbacks: Sequence[Callback] = (),
        val_loader: Iterable[Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.strategy = strategy
        self.module = module
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.callbacks = list(callbacks)
        self.state = TrainState()
        self.engines: dict[str, Engine] = {}
        self.phases: list[Phase] = []
        self.run_dir = Path(cfg.run_dir)
        self._pending_rank_state: dict[str, Any] | None = None
        self._window = _Window()
        self._clock_start = 0.0
        self._time_up = False

    # ------------------------------------------------------------------ fit
    def fit(self) -> TrainState:
        self._setup_engines()
        self._plan_phases()
        self._restore_checkpoint()
        self._clock_start = _now() - self.state.train_seconds
        self._emit("on_fit_start")
        while self._has_more_phases():
            self._run_phase(self.phases[self.state.phase_index])
        self._emit("on_fit_end")
        return self.state

    def _setup_engines(self) -> None:
        self.strategy.setup()
        _seed_everything(self.cfg.seed)
        self.engines = dict(self.module.configure(self.strategy, self.cfg.optim))
        if not self.engines:
            raise ValueError(f"{type(self.module).__name__}.configure returned no engines")

    def _plan_phases(self) -> None:
        self.phases = list(self.module.plan(self.cfg.max_steps))
        for phase in self.phases:
            engine = self.engines.get(phase.engine)
            if engine is None:
                raise ValueError(
                    f"phase {phase.name!r} trains engine {phase.engine!r}; known: {sorted(self.engines)}"
                )
            if not engine.has_optimizer:
                raise ValueError(
                    f"phase {phase.name!r} trains engine {phase.engine!r}, which has no optimizer"
                )

    def _restore_checkpoint(self) -> None:
        from fusionrec.trainer.checkpoint import load_checkpoint
        from fusionrec.trainer.checkpoint_reader import resolve_resume

        path = resolve_resume(self.checkpoint_root, self.cfg.checkpoint.resume)
        if path is not None:
            self._pending_rank_state = load_checkpoint(self, path)
            log.info("resumed from %s at step %d", path, self.state.step)

    def _has_more_phases(self) -> bool:
        in_budget = self.state.step < self.cfg.max_steps and not self._time_up
        return self.state.phase_index < len(self.phases) and in_budget

    # ------------------------------------------------------------------ phases and epochs
    def _run_phase(self, phase: Phase) -> None:
        self._start_phase(phase)
        while not self._phase_done(phase):
            self._run_epoch(phase)
        self._end_phase(phase)

    def _start_phase(self, phase: Phase) -> None:
        new_loader = self.module.on_phase_start(phase)
        if new_loader is not None:
            self.train_loader = new_loader
        if self._pending_rank_state is not None:  # resume: after the module rebuilt its data
            _restore_rank_state(self, self._pending_rank_state)
            self._pending_rank_state = None
        self._window.reset(self.state)
        self._emit("on_phase_start", phase)

    def _phase_complete(self, phase: Phase) -> bool:
        if phase.steps is not None:
            return self.state.phase_step >= phase.steps
        return self.state.phase_epoch >= phase.epochs

    def _phase_done(self, phase: Phase) -> bool:
        """Complete, or stopped by the run's step or time budget (then the phase resumes in a later run)."""
        return self.state.step >= self.cfg.max_steps or self._time_up or self._phase_complete(phase)

    def _run_epoch(self, phase: Phase) -> None:
        engine = self.engines[phase.engine]
        micro = 0
        overlap = self._forward_is_local()
        it = iter(self.train_loader)
        while (losses := self._agreed_forward(it, phase, overlap)) is not None:
            self._backward(losses, engine)
            micro += 1
            if self.strategy.step(engine):
                micro = 0
                self._after_optimizer_step(phase)
                if self._phase_done(phase):
                    return
        self.state.phase_epoch += 1
        self.state.epochs_done += 1
        if hasattr(self.train_loader, "set_epoch"):  # ShardLoader does not advance epochs by itself
            self.train_loader.set_epoch(self.state.epochs_done)
        if micro and phase.epochs is not None and self.state.phase_epoch >= phase.epochs:
            self._count_skip("carried_partial_accumulation", micro)
        self._emit("on_epoch_end", phase)

    def _end_phase(self, phase: Phase) -> None:
        if self._phase_complete(phase):
            self.module.on_phase_end(phase)
            self.state.phase_index += 1
            self.state.phase_step = 0
            self.state.phase_epoch = 0
        self._emit("on_phase_end", phase)

    # ------------------------------------------------------------------ micro-batches and steps
    def _forward_is_local(self) -> bool:
        """True when no rank's forward pass can issue a collective (see the module docstring)."""
        zero3 = any(e.zero_stage == 3 for e in self.engines.values())
        return not zero3 and not getattr(self.module, "collective_forward", False)

    def _agreed_forward(self, it: Iterator[Any], phase: Phase, overlap: bool) -> _Forward | None:
        """The next micro-batch's forward while EVERY rank still has one (one scalar all-reduce), else None."""
        batch = next(it, _END)
        agreed = self.strategy.all_reduce_async(0.0 if batch is _END else 1.0, op="min")
        forward = self._forward(batch, phase) if overlap and batch is not _END else None
        if agreed().item() == 0.0:
            if batch is not _END:
                self._count_skip("uneven_tail_batches", 1 + sum(1 for _ in it))
            return None
        return forward or self._forward(batch, phase)

    def _forward(self, batch: Any, phase: Phase) -> _Forward:
        batch = self.strategy.to_device(batch)
        losses = self.module.train_batch(batch, phase)
        if "loss" not in losses:
            raise ValueError(f"{type(self.module).__name__}.train_batch must return a dict with key 'loss'")
        return _Forward(losses, batch)

    def _backward(self, forward: _Forward, engine: Engine) -> None:
        self.strategy.backward(forward.losses["loss"], engine)
        self._window.add(forward.losses, self.module.batch_stats(forward.batch))

    def _after_optimizer_step(self, phase: Phase) -> None:
        self.state.step += 1
        self.state.phase_step += 1
        self.state.train_seconds = _now() - self._clock_start
        if self.cfg.max_minutes and self.state.step % self.cfg.log_every == 0:
            spent = self.state.train_seconds >= 60 * self.cfg.max_minutes
            self._time_up = bool(self.strategy.all_reduce(float(spent), op="max").item())
        if self.state.step % self.cfg.log_every == 0 or self._phase_done(phase):
            self._emit("on_log", self._reduce_metrics(phase))
        self._emit("on_step_end", phase)

    def _reduce_metrics(self, phase: Phase) -> dict[str, float]:
        engine = self.engines[phase.engine]
        metrics = self._window.reduce(self.strategy, self.state)
        metrics[f"{phase.name}/lr"] = engine.lr
        if engine.grad_norm is not None:
            metrics[f"{phase.name}/grad_norm"] = engine.grad_norm
        metrics = {(k if "/" in k else f"{phase.name}/{k}"): v for k, v in metrics.items()}
        self._window.reset(self.state)
        return metrics

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, loader: Iterable[Any] | None = None) -> dict[str, float]:
        """Exact global validation metrics: module.eval_batch sums, all-reduced, divided by ``count``."""
        loader = loader if loader is not None else self.val_loader
        if loader is None:
            raise ValueError("validate() needs a val_loader")
        modes = {name: e.module.training for name, e in self.engines.items()}
        for e in self.engines.values():
            e.eval()
        sums: dict[str, torch.Tensor] = {}
        for batch in self._agreed_val_batches(loader):
            for key, value in self.module.eval_batch(self.strategy.to_device(batch)).items():
                sums[key] = sums.get(key, 0) + value.detach().double().cpu()
        for name, e in self.engines.items():
            e.train(modes[name])
        return _finish_val(self.strategy, sums)

    def _agreed_val_batches(self, loader: Iterable[Any]) -> Iterator[Any]:
        it = iter(loader)
        while True:
            batch = next(it, _END)
            has = 0.0 if batch is _END else 1.0
            lo = self.strategy.all_reduce(has, op="min").item()
            hi = self.strategy.all_reduce(has, op="max").item()
            if lo != hi:
                raise ValueError(
                    "validation loader gave ranks different numbers of batches; pad it so every rank "
                    "sees the same count (metrics would otherwise be inexact)"
                )
            if lo == 0.0:
                return
            yield batch

    # ------------------------------------------------------------------ helpers
    @property
    def checkpoint_root(self) -> Path:
        root = Path(self.cfg.checkpoint.dir)
        return root if root.is_absolute() else self.run_dir / root

    def _count_skip(self, reason: str, n: int) -> None:
        self.state.skipped[reason] = self.state.skipped.get(reason, 0) + n
        log.warning("rank %d: %s += %d (total %d)", self.strategy.rank, reason, n, self.state.skipped[reason])

    def _emit(self, event: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)


_END = object()


@dataclass
class _Forward:
    losses: dict[str, torch.Tensor]
    batch: Any


class _Window:
    """Local sums of losses and sizes since the last log; reduced over ranks in ONE all-reduce."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.micro = 0
        self.samples = 0
        self.tokens = 0
        self.t0 = time.perf_counter()

    def reset(self, state: TrainState) -> None:
        self.__init__()

    def add(self, losses: Mapping[str, torch.Tensor], stats: Any) -> None:
        for key, value in losses.items():
            # Stay on device: no host sync per micro-batch on GPU.
            self.sums[key] = self.sums.get(key, 0.0) + value.detach().double()
        self.micro += 1
        self.samples += stats.samples
        self.tokens += stats.tokens

    def reduce(self, strategy: DeepspeedStrategy, state: TrainState) -> dict[str, float]:
        keys = sorted(self.sums)
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        # Elapsed time rides in the same all-reduce (mean over ranks): every rank logs the same throughput.
        sizes = torch.tensor([self.micro, self.samples, self.tokens, elapsed], dtype=torch.float64)
        local = (
            torch.cat([torch.stack([self.sums[k].reshape(()).cpu() for k in keys]).double(), sizes])
            if keys
            else sizes
        )
        total = strategy.all_reduce(local, op="sum")
        micro, samples, tokens, elapsed_sum = (float(v) for v in total[-4:])
        elapsed = elapsed_sum / strategy.world_size
        state.samples_seen += int(samples)
        state.tokens_seen += int(tokens)
        metrics = {k: float(total[i]) / max(micro, 1.0) for i, k in enumerate(keys)}
        metrics["throughput/samples_per_s"] = samples / elapsed
        if tokens:
            metrics["throughput/tokens_per_s"] = tokens / elapsed
        return metrics


def _finish_val(strategy: DeepspeedStrategy, sums: dict[str, torch.Tensor]) -> dict[str, float]:
    keys = strategy.broadcast_object(sorted(sums))  # same key order on every rank
    local = (
        torch.stack([torch.as_tensor(sums.get(k, 0.0), dtype=torch.float64).sum() for k in keys])
        if keys
        else None
    )
    if local is None:
        return {}
    total = dict(zip(keys, strategy.all_reduce(local, op="sum").tolist(), strict=True))
    count = total.get("count")
    out: dict[str, float] = {}
    for key, value in total.items():
        if key.endswith("_sum") and count:
            out[f"val/{key[: -len('_sum')]}"] = value / count
        elif key != "count":
            out[f"val/{key}"] = value
    out["val/count"] = count or 0.0
    return out


def _now() -> float:
    """The training clock (a function so a test can skew one rank's clock)."""
    return time.perf_counter()


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _restore_rank_state(trainer: Trainer, rank_state: dict[str, Any]) -> None:
    from fusionrec.trainer.checkpoint import restore_rank_state

    restore_rank_state(trainer, rank_state)
