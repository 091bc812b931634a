"""`fusionrec train RECIPE`: one worker function, three ways to start it.

* Inside a launcher (deepspeed, torchrun, launch/multinode.sh, Ray Train): RANK/WORLD_SIZE are set, so
  this process *is* a rank and runs `run_worker` directly.
* Plain `fusionrec train ... --nproc N` on one machine: re-executes itself under torchrun (or the
  deepspeed launcher with `--launcher deepspeed`) with N local ranks on 127.0.0.1.
* `--nproc 1`: runs as a world of one (the strategy sets the env for a single rank).

Recipes register a builder `build(cfg: Config, strategy) -> Built` in RECIPES; the builder receives the
whole tree but passes each component only its own section.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusionrec.fileio import atomic_write_text
from fusionrec.launch.config import Config, load_config, write_resolved

# recipe -> "module:function" of its builder (imported lazily: recipes pull in heavy libraries).
RECIPES = {
    "toy": "fusionrec.launch.recipes:build_toy",
    "genrec": "fusionrec.launch.recipes:build_genrec",
    "idgenrec": "fusionrec.launch.recipes:build_idgenrec",
    "dmpo": "fusionrec.launch.recipes:build_dmpo",
    "palr": "fusionrec.launch.recipes:build_palr",
}


@dataclass
class Built:
    """What a recipe builder returns to the generic Trainer."""

    module: Any
    train_loader: Iterable[Any]
    val_loader: Iterable[Any] | None = None


def in_launcher() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


RESOLVED_CONFIG_ENV = "FUSIONREC_RESOLVED_CONFIG"


def spawn_local(recipe: str, cfg: Config, nproc: int, launcher: str) -> int:
    """Re-run `fusionrec train RECIPE` under a local launcher with `nproc` ranks (OMP_NUM_THREADS=1 each).

    The ranks read the already resolved config from the run dir (named in an env var) rather than from
    forwarded flags, which the launchers' own argument parsers would try to interpret.
    """
    from fusionrec.trainer.strategy import free_port

    resolved = write_resolved(cfg, Path(cfg.train.run_dir))
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env[RESOLVED_CONFIG_ENV] = str(resolved.resolve())
    port = str(free_port())
    argv = ["train", recipe]
    entry = ["-m", "fusionrec.launch.cli", *argv]
    if launcher == "deepspeed":
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_accelerators", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", port, "--module", "fusionrec.launch.cli", *argv]  # fmt: skip
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", port, *entry]  # fmt: skip
    return subprocess.call(cmd, env=env)


def run_worker(recipe: str, cfg: Config) -> dict[str, Any]:
    """The body every rank runs: build strategy + recipe, fit, return the final state (rank 0 writes it)."""
    from fusionrec.trainer.callbacks import HistoryCallback, ValidationCallback, default_callbacks
    from fusionrec.trainer.loop import Trainer
    from fusionrec.trainer.strategy import DeepspeedStrategy

    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(sorted(RECIPES))}")
    mod_name, fn_name = RECIPES[recipe].split(":")
    builder = getattr(importlib.import_module(mod_name), fn_name)
    strategy = DeepspeedStrategy(cfg.train.deepspeed)
    strategy.setup()
    run_dir = Path(cfg.train.run_dir)
    if strategy.is_rank0:
        write_resolved(cfg, run_dir)
        # What `fusionrec export` / `evaluate` need to rebuild the models of a checkpoint of this run.
        atomic_write_text(run_dir / "run.json", json.dumps({"recipe": recipe, "world_size": strategy.world_size}))
    built: Built = builder(cfg, strategy)
    history = HistoryCallback()
    callbacks = [*default_callbacks(cfg.train, with_validation=built.val_loader is not None), history]
    if built.val_loader is not None and not cfg.train.eval_every:
        callbacks.insert(0, ValidationCallback(every=0, at_end=True))  # always report final validation
    trainer = Trainer(
        cfg.train, strategy, built.module, built.train_loader, callbacks, val_loader=built.val_loader
    )
    state = trainer.fit()
    summary = {
        "recipe": recipe,
        "run_dir": str(run_dir),
        "logs": history.logs,  # train/* losses per log interval, val/* metrics per validation
        **state.to_dict(),
    }
    if strategy.is_rank0:
        atomic_write_text(run_dir / "train_summary.json", json.dumps(summary, indent=2))
    strategy.teardown()
    return summary


def main(recipe: str, config: str | None, overrides: list[str], nproc: int, launcher: str) -> int:
    if config is None and in_launcher() and os.environ.get(RESOLVED_CONFIG_ENV):
        config = os.environ[RESOLVED_CONFIG_ENV]  # a rank spawned by spawn_local
    cfg = load_config(config, overrides)  # validate before spawning anything
    if in_launcher() or nproc == 1:
        run_worker(recipe, cfg)
        return 0
    print(f"[fusionrec] launching {nproc} ranks with {launcher} on 127.0.0.1", file=sys.stderr)
    return spawn_local(recipe, cfg, nproc, launcher)


def run_of_checkpoint(checkpoint: str | Path) -> tuple[str, Config, Path]:
    """(recipe, config, run_dir) of a checkpoint folder `RUN/checkpoints/step-N`."""
    ckpt = Path(checkpoint)
    if not ckpt.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    run_dir = ckpt.resolve().parent.parent
    meta, config = run_dir / "run.json", run_dir / "config.toml"
    if not meta.is_file() or not config.is_file():
        raise ValueError(
            f"{ckpt}: not inside a fusionrec run dir (missing {meta.name} or {config.name} in {run_dir})"
        )
    return json.loads(meta.read_text())["recipe"], load_config(config), run_dir


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """HF `save_pretrained` folders for every model of a checkpoint (+ module state, e.g. ID tables)."""
    from fusionrec.trainer.checkpoint import export

    recipe, cfg, _ = run_of_checkpoint(checkpoint)
    if recipe not in EXPORTERS:
        raise ValueError(f"recipe {recipe!r} has no exporter; known: {', '.join(sorted(EXPORTERS))}")
    mod_name, fn_name = EXPORTERS[recipe].split(":")
    models, tokenizers = getattr(importlib.import_module(mod_name), fn_name)(cfg)
    written = export(Path(checkpoint), Path(out_dir), models)
    for name, tokenizer in tokenizers.items():  # each HF folder is complete: weights + config + tokenizer
        tokenizer.save_pretrained(str(written[name]))
    return written


# recipe -> "module:function(cfg) -> ({engine: freshly built model}, {engine: tokenizer})" for export.
EXPORTERS = {
    "genrec": "fusionrec.launch.recipes:models_genrec",
}
