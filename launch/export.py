"""`fusionrec export RUN_OR_CHECKPOINT --out DIR`: a checkpoint's models as HF `save_pretrained` folders.

A run dir (`RUN`, holding `run.json` + `config.toml`) means its newest complete checkpoint; a checkpoint
folder (`RUN/checkpoints/step-N`) means itself. `run.json` names the recipe, whose exporter (its `Recipe.export`)
rebuilds the models from the run's resolved config and loads the consolidated weights (any ZeRO stage).
Every written model folder is complete - weights, config and tokenizer - so `from_pretrained` needs nothing
else; each folder is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
from pathlib import Path

from fusionrec.launch.config import Config, load_config, recipes


def export_checkpoint(run_or_checkpoint: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Export a run's newest checkpoint (or the named checkpoint); returns {model or file name: path}.

    ValueError naming the recipe when it has no exporter (e.g. `toy`), or naming the path when it is
    neither a run dir nor a checkpoint of one, or a run without a complete checkpoint.
    """
    from fusionrec.trainer.checkpoint import verify_checkpoint

    recipe, cfg, checkpoint = resolve_source(run_or_checkpoint)
    verify_checkpoint(checkpoint)  # a broken or crafted checkpoint leaves no output folder behind
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return recipes()[recipe].load("export")(checkpoint, cfg, out)


def resolve_source(path: str | Path) -> tuple[str, Config, Path]:
    """(recipe, resolved config, checkpoint folder) of a run dir or of a checkpoint inside one."""
    from fusionrec.trainer.checkpoint import MARKER, list_checkpoints

    src = Path(path)
    if not src.exists():
        raise FileNotFoundError(f"export: {src} does not exist (give a run dir or RUN/checkpoints/step-N)")
    if (src / MARKER).is_file():
        recipe, cfg = _run_meta(src.resolve().parent.parent, src)
        return recipe, cfg, src
    recipe, cfg = _run_meta(src, src)
    root = Path(cfg.train.checkpoint.dir)
    root = root if root.is_absolute() else src / root
    found = list_checkpoints(root)
    if not found:
        raise ValueError(f"export: run {src} has no complete checkpoint under {root}")
    return recipe, cfg, found[-1][1]


def _run_meta(run_dir: Path, given: Path) -> tuple[str, Config]:
    """(recipe, config) of a run dir; checked before any checkpoint is looked at or loaded."""
    meta, config = run_dir / "run.json", run_dir / "config.toml"
    if not meta.is_file() or not config.is_file():
        raise ValueError(
            f"export: {given} is neither a fusionrec run dir nor a checkpoint inside one "
            f"(missing {meta.name} or {config.name} in {run_dir})"
        )
    recipe = json.loads(meta.read_text())["recipe"]
    exportable = sorted(name for name, r in recipes().items() if r.export)
    if recipe not in exportable:
        raise ValueError(
            f"export: {given} is a run of recipe {recipe!r}, which has no exporter "
            f"(exportable recipes: {', '.join(exportable)})"
        )
    return recipe, load_config(config)


__all__ = ["export_checkpoint", "resolve_source"]
