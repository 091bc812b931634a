"""The body every training rank runs, whoever started the process: torchrun, the deepspeed launcher,
`launch/multinode.sh` or a Ray Train worker. It builds the strategy and the recipe, fits, and writes the
run's records (resolved config, `run.json`, `train_summary.json`) on rank 0.

It lives in trainer/ so that launch/ (`fusionrec train`) and cluster/ (Ray Train workers) run the same code
while the layering stays launch -> cluster -> trainer -> data_pipeline. The two things only launch/ knows -
which builder a recipe name means and how the root config is written - arrive as arguments, bound in a
:class:`RecipeRun`. Both are module-level functions, so a RecipeRun pickles by reference and can be shipped
to Ray workers, which import the builder's module themselves.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusionrec.fileio import atomic_write_text

RUN_META = "run.json"  # what `fusionrec export` / `evaluate` need to rebuild the models of a checkpoint
SUMMARY_FILE = "train_summary.json"


@dataclass
class Built:
    """What a recipe builder returns to the generic Trainer."""

    module: Any
    train_loader: Iterable[Any]
    val_loader: Iterable[Any] | None = None


# builder(root_config, strategy) -> Built; write_config(root_config, run_dir) writes config.toml/json.
Builder = Callable[[Any, Any], Built]
ConfigWriter = Callable[[Any, Path], Any]


@dataclass(frozen=True)
class RecipeRun:
    """A recipe name bound to its builder (and the writer of the resolved root config, if any)."""

    recipe: str
    builder: Builder
    write_config: ConfigWriter | None = None

    def __call__(self, cfg: Any) -> dict[str, Any]:
        return run_recipe(self, cfg)


def run_recipe(run: RecipeRun, cfg: Any) -> dict[str, Any]:
    """Build strategy + recipe, fit, return the final state (rank 0 writes it to the run dir).

    `cfg` is the root config: only `cfg.train` (a TrainConfig) is read here; the builder hands every other
    section to its own component.
    """
    from fusionrec.trainer.callbacks import HistoryCallback, ValidationCallback, default_callbacks
    from fusionrec.trainer.loop import Trainer
    from fusionrec.trainer.strategy import DeepspeedStrategy

    strategy = DeepspeedStrategy(cfg.train.deepspeed)
    strategy.setup()
    run_dir = Path(cfg.train.run_dir)
    if strategy.is_rank0:
        if run.write_config is not None:
            run.write_config(cfg, run_dir)
        meta = {
            "recipe": run.recipe,
            "world_size": strategy.world_size,
            "precision": strategy.cfg.precision,
        }  # resolved: "auto" says what it chose here
        atomic_write_text(run_dir / RUN_META, json.dumps(meta))
    built: Built = run.builder(cfg, strategy)
    history = HistoryCallback()
    callbacks = [*default_callbacks(cfg.train, with_validation=built.val_loader is not None), history]
    if built.val_loader is not None and not cfg.train.eval_every:
        callbacks.insert(0, ValidationCallback(every=0, at_end=True))  # always report final validation
    trainer = Trainer(
        cfg.train, strategy, built.module, built.train_loader, callbacks, val_loader=built.val_loader
    )
    state = trainer.fit()
    summary = {
        "recipe": run.recipe,
        "run_dir": str(run_dir),
        "precision": strategy.cfg.precision,
        "logs": history.logs,  # train/* losses per log interval, val/* metrics per validation
        **state.to_dict(),
    }
    if strategy.is_rank0:
        atomic_write_text(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2))
    strategy.teardown()
    return summary


__all__ = ["Built", "RecipeRun", "run_recipe"]
