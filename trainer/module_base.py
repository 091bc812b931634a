"""The TrainModule protocol: what a recipe (IDGenRec, GenRec, PALR, DMPO, ...) gives the generic Trainer.

A recipe owns its models, losses and phase logic; the Trainer owns the loop, DeepSpeed calls (through the
strategy), logging, validation and checkpointing. The split follows OLMo-core's TrainModule:

* ``configure(strategy, optim)`` builds the models and wraps each with ``strategy.prepare(model, optim_cfg,
  name=...)`` (``optim_cfg=None`` for a frozen model, e.g. DMPO's reference). It returns the engines by
  name; the names are the checkpoint sub-folders and the export folders.
* ``plan(max_steps)`` lists the phases of the run (:class:`Phase`: a name, the ONE engine whose optimizer
  it steps, and its length in steps or epochs). A plain recipe has one phase; IDGenRec has rounds of
  [``id`` phase, ``rec`` phase]. The Trainer walks the plan, calls ``on_phase_start(phase)`` (which may return
  a rebuilt train loader, e.g. after the ID table changed) and ``on_phase_end(phase)`` (e.g. regenerate the
  ID table). Phases are resumable: the checkpoint records the phase index and the steps done in it. Other
  engines must not receive gradients in a phase: the module freezes them (``engine.set_trainable(False)``)
  in ``on_phase_start``.
* ``train_batch(batch, phase)`` runs the forward pass of one micro-batch and returns a dict of scalar
  tensors; the key ``"loss"`` (mean over the micro-batch) is back-propagated through ``phase.engine``
  (DeepSpeed's backward does gradient-accumulation scaling and ZeRO hooks); every other key is logged
  (global mean). ``batch_stats(batch)`` says how many samples/tokens the micro-batch held (for throughput).
* ``eval_batch(batch)`` returns sums (``{"loss_sum": .., "count": ..}`` style) that the Trainer all-reduces
  and divides, so validation metrics are exact over all ranks.
* ``state_dict()/load_state_dict()`` carry module-specific state (ID tables, round counters) into the
  checkpoint. Must hold only tensors/str/int/float/bool/lists/dicts (it is loaded with weights_only=True).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from fusionrec.trainer.config import OptimConfig
    from fusionrec.trainer.strategy import DeepspeedStrategy, Engine


@dataclass(frozen=True)
class Phase:
    """One contiguous stretch of training with one active engine.

    ``steps`` counts optimizer steps; ``epochs`` counts passes over the phase's loader. Exactly one of them
    is set. ``round`` is IDGenRec's alternation round (0 for single-phase recipes).
    """

    name: str
    engine: str
    steps: int | None = None
    epochs: int | None = None
    round: int = 0

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError(
                f"phase {self.name!r}: set exactly one of steps={self.steps}, epochs={self.epochs}"
            )
        if (self.steps is not None and self.steps < 1) or (self.epochs is not None and self.epochs < 1):
            raise ValueError(f"phase {self.name!r}: steps/epochs must be >= 1")


@dataclass(frozen=True)
class BatchStats:
    samples: int
    tokens: int = 0


@runtime_checkable
class TrainModule(Protocol):
    """What the Trainer needs from a recipe. See the module docstring for the contract."""

    def configure(self, strategy: DeepspeedStrategy, optim: OptimConfig) -> Mapping[str, Engine]: ...

    def plan(self, max_steps: int) -> list[Phase]: ...

    def on_phase_start(self, phase: Phase) -> Iterable[Any] | None: ...

    def on_phase_end(self, phase: Phase) -> None: ...

    def train_batch(self, batch: Any, phase: Phase) -> dict[str, torch.Tensor]: ...

    def eval_batch(self, batch: Any) -> dict[str, torch.Tensor]: ...

    def batch_stats(self, batch: Any) -> BatchStats: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class BaseTrainModule:
    """Defaults for the optional parts of the protocol: one phase over ``max_steps``, no extra state.

    Subclasses implement ``configure``, ``train_batch`` and (for validation) ``eval_batch``.
    """

    main_engine: str = "model"

    def plan(self, max_steps: int) -> list[Phase]:
        return [Phase(name="train", engine=self.main_engine, steps=max_steps)]

    def on_phase_start(self, phase: Phase) -> Iterable[Any] | None:
        return None

    def on_phase_end(self, phase: Phase) -> None:
        return None

    def eval_batch(self, batch: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} has no eval_batch; set train.eval_every=0")

    def batch_stats(self, batch: Any) -> BatchStats:
        """Samples = leading dim of the first tensor found; tokens = non-pad count of ``attention_mask``."""
        tensors = batch.values() if isinstance(batch, Mapping) else batch
        first = next((t for t in tensors if isinstance(t, torch.Tensor)), None)
        samples = int(first.shape[0]) if first is not None else 0
        mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
        return BatchStats(samples=samples, tokens=int(mask.sum()) if mask is not None else 0)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(
                f"{type(self).__name__} has no module state but the checkpoint holds {sorted(state)}"
            )
