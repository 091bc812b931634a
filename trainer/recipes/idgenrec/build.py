"""`fusionrec train idgenrec` and `fusionrec export` of an IDGenRec run."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from fusionrec.fileio import replace_folders
from fusionrec.trainer.worker import Built


def build(cfg: Any, strategy: Any) -> Built:
    """IDGenRec alternate training: phases build their loaders (the ID table changes between phases)."""
    from fusionrec.trainer.recipes.idgenrec.module import build_idgenrec_module

    module = build_idgenrec_module(cfg.required_section("idgenrec"), cfg.train.run_dir)
    return Built(module=module, train_loader=[], val_loader=module.val_loader())


def export(checkpoint: Path, cfg: Any, out: Path) -> dict[str, Path]:
    """`out/recommender`, `out/id_generator` (each with the tokenizer), `out/tokenizer`, `out/id_table.json`
    (the textual IDs the recommender was trained with: its outputs mean nothing without them)."""
    from fusionrec.trainer.recipes.idgenrec.artefacts import export_idgenrec

    with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as tmp:
        written = export_idgenrec(checkpoint, tmp)
        tokenizer_files = [p for p in written["tokenizer"].iterdir() if p.is_file()]
        for model in ("recommender", "id_generator"):
            for f in tokenizer_files:
                shutil.copy2(f, written[model] / f.name)
        return replace_folders(tmp, out, [p.name for p in written.values()])
