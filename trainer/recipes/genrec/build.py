"""`fusionrec train genrec` and `fusionrec export` of a GenRec run."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from fusionrec.fileio import replace_folders
from fusionrec.trainer.worker import Built


def _module(cfg: Any) -> Any:
    from fusionrec.trainer.recipes.genrec.module import build_genrec_module

    return build_genrec_module(cfg.section("genrec"), cfg.corpus_dir(), loader=cfg.section("loader"))


def build(cfg: Any, strategy: Any) -> Built:
    """GenRec (BART + user/item ID embeddings): its phases bring their own loaders; validation = beam search."""
    module = _module(cfg)
    return Built(module=module, train_loader=[], val_loader=module.val_loader())


def export(checkpoint: Path, cfg: Any, out: Path) -> dict[str, Path]:
    """`out/model`: the GenRec BART (user/item ID embeddings included) + its tokenizer."""
    from fusionrec.trainer.checkpoint import export as export_models

    module = _module(cfg)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as tmp:
        written = export_models(checkpoint, Path(tmp), {"model": module.build_model()})  # + module_state.json
        module.tokenizer.save_pretrained(str(written["model"]))
        names = [p.name for p in Path(tmp).iterdir() if not p.name.startswith(".")]
        return replace_folders(tmp, out, names)
