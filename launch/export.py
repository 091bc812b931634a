"""`fusionrec export RUN_OR_CHECKPOINT --out DIR`: a checkpoint's models as HF `save_pretrained` folders.

A run dir (`RUN`, holding `run.json` + `config.toml`) means its newest complete checkpoint; a checkpoint
folder (`RUN/checkpoints/step-N`) means itself. `run.json` names the recipe, whose exporter in EXPORTERS
rebuilds the models from the run's resolved config and loads the consolidated weights (any ZeRO stage).
Every written model folder is complete - weights, config and tokenizer - so `from_pretrained` needs nothing
else; each folder is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fusionrec.launch.config import Config, load_config

# recipe -> "module:function(checkpoint: Path, cfg: Config, out: Path) -> {name: written path}".
EXPORTERS = {
    "genrec": "fusionrec.launch.export:export_genrec",
    "idgenrec": "fusionrec.launch.export:export_idgenrec",
    "dmpo": "fusionrec.launch.export:export_dmpo",
    "palr": "fusionrec.launch.export:export_palr",
}


def export_checkpoint(run_or_checkpoint: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Export a run's newest checkpoint (or the named checkpoint); returns {model or file name: path}.

    ValueError naming the recipe when it has no exporter (e.g. `toy`), or naming the path when it is
    neither a run dir nor a checkpoint of one, or a run without a complete checkpoint.
    """
    from fusionrec.trainer.checkpoint import verify_checkpoint

    recipe, cfg, checkpoint = resolve_source(run_or_checkpoint)
    verify_checkpoint(checkpoint)  # a broken or crafted checkpoint leaves no output folder behind
    mod_name, fn_name = EXPORTERS[recipe].split(":")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return getattr(importlib.import_module(mod_name), fn_name)(checkpoint, cfg, out)


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
    if recipe not in EXPORTERS:
        raise ValueError(
            f"export: {given} is a run of recipe {recipe!r}, which has no exporter "
            f"(exportable recipes: {', '.join(sorted(EXPORTERS))})"
        )
    return recipe, load_config(config)


def _put_in_place(tmp_root: Path, out: Path, names: list[str]) -> dict[str, Path]:
    """Rename each finished `tmp_root/<name>` over `out/<name>` (a reader never sees a half-written one)."""
    written = {}
    for name in names:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp_root / name, target)
        written[Path(name).stem] = target
    return written


# ------------------------------------------------------------------------------------------------ exporters


def export_genrec(checkpoint: Path, cfg: Config, out: Path) -> dict[str, Path]:
    """`out/model`: the GenRec BART (user/item ID embeddings included) + its tokenizer."""
    from fusionrec.launch.recipes import models_genrec
    from fusionrec.trainer.checkpoint import export

    models, tokenizers = models_genrec(cfg)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as tmp:
        written = export(checkpoint, Path(tmp), models)  # + module_state.json when serialisable
        for name, tokenizer in tokenizers.items():
            tokenizer.save_pretrained(str(written[name]))
        names = [p.name for p in Path(tmp).iterdir() if not p.name.startswith(".")]
        return _put_in_place(Path(tmp), out, names)


def export_idgenrec(checkpoint: Path, cfg: Config, out: Path) -> dict[str, Path]:
    """`out/recommender`, `out/id_generator` (each with the tokenizer), `out/tokenizer`, `out/id_table.json`
    (the textual IDs the recommender was trained with: its outputs mean nothing without them)."""
    from fusionrec.trainer.recipes.idgenrec.artefacts import export_idgenrec as export_models

    with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as tmp:
        written = export_models(checkpoint, tmp)
        tokenizer_files = [p for p in written["tokenizer"].iterdir() if p.is_file()]
        for model in ("recommender", "id_generator"):
            for f in tokenizer_files:
                shutil.copy2(f, written[model] / f.name)
        return _put_in_place(Path(tmp), out, [p.name for p in written.values()])


def export_dmpo(checkpoint: Path, cfg: Config, out: Path) -> dict[str, Path]:
    """`out/policy`: the DMPO/SFT policy with LoRA merged into the base weights (a plain causal LM)."""
    return _export_ranker(checkpoint, cfg.section("dmpo").model, "policy", out)


def export_palr(checkpoint: Path, cfg: Config, out: Path) -> dict[str, Path]:
    """`out/ranker`: the PALR ranker with LoRA merged into the base weights (a plain causal LM)."""
    return _export_ranker(checkpoint, cfg.section("palr").model, "ranker", out)


def _export_ranker(checkpoint: Path, model_cfg: Any, engine: str, out: Path) -> dict[str, Path]:
    """Rebuild the ranker as trained (base + LoRA), load the consolidated weights strictly, merge, save."""
    from fusionrec.trainer.checkpoint_reader import load_weights, verify_checkpoint
    from fusionrec.trainer.models.causal_lm import build_ranker, export_merged

    verify_checkpoint(checkpoint)
    model, tokenizer = build_ranker(model_cfg)
    load_weights(model, checkpoint, engine)
    return {engine: export_merged(model, tokenizer, out / engine)}  # temp dir + rename inside


__all__ = ["EXPORTERS", "export_checkpoint", "resolve_source"]
