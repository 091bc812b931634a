"""`fusionrec train RECIPE`: one worker function, three ways to start it.

* Inside a launcher (deepspeed, torchrun, launch/multinode.sh): RANK/WORLD_SIZE are set, so this process
  *is* a rank and runs `run_worker` directly. Under Ray Train (`--ray`, cluster/ray_train.py) each worker
  runs the same body, `trainer.worker.run_recipe`, with the `recipe_run(...)` the driver shipped to it.
* Plain `fusionrec train ... --nproc N` on one machine: re-executes itself under torchrun (or the
  deepspeed launcher with `--launcher deepspeed`) with N local ranks on 127.0.0.1.
* `--nproc 1`: runs as a world of one (the strategy sets the env for a single rank).

Recipes are discovered (trainer/recipes/__init__.py: every `trainer/recipes/<name>/` declaring `RECIPE`,
plus folders on $FUSIONREC_RECIPE_PATH); a recipe's builder `build(cfg, strategy) -> Built` receives the whole
tree but passes each component only its own section.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from fusionrec.launch.config import Config, load_config, recipes, write_resolved
from fusionrec.trainer.worker import Built, RecipeRun, run_recipe


def recipe_run(recipe: str) -> RecipeRun:
    """The recipe's builder bound with the root-config writer: what every rank runs, under any launcher
    (ValueError naming the known recipes for an unknown name)."""
    known = recipes()
    if recipe not in known:
        raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(sorted(known))}")
    return RecipeRun(recipe, known[recipe].load("build"), write_resolved)


def in_launcher() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


RESOLVED_CONFIG_ENV = "FUSIONREC_RESOLVED_CONFIG"


def spawn_local(recipe: str, cfg: Config, nproc: int, launcher: str) -> int:
    """Re-run `fusionrec train RECIPE` under a local launcher with `nproc` ranks (OMP_NUM_THREADS=1 each).

    The ranks read the already resolved config from the run dir (named in an env var) rather than from
    forwarded flags, which the launchers' own argument parsers would try to interpret.
    """
    from fusionrec.ports import free_port

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
    """The body every rank runs (trainer.worker.run_recipe): fit, return the final state."""
    return run_recipe(recipe_run(recipe), cfg)


def main(recipe: str, config: str | None, overrides: list[str], nproc: int, launcher: str) -> int:
    if config is None and in_launcher() and os.environ.get(RESOLVED_CONFIG_ENV):
        config = os.environ[RESOLVED_CONFIG_ENV]  # a rank spawned by spawn_local
    cfg = load_config(config, overrides)  # validate before spawning anything
    recipe_run(recipe)
    if in_launcher() or nproc == 1:
        run_worker(recipe, cfg)
        return 0
    print(f"[fusionrec] launching {nproc} ranks with {launcher} on 127.0.0.1", file=sys.stderr)
    return spawn_local(recipe, cfg, nproc, launcher)


__all__ = ["Built", "main", "recipe_run", "run_worker", "spawn_local"]
