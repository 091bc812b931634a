"""`fusionrec export` of a PALR run."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def export(checkpoint: Path, cfg: Any, out: Path) -> dict[str, Path]:
    """`out/ranker`: the PALR ranker with LoRA merged into the base weights (a plain causal LM)."""
    from fusionrec.trainer.llm.export import export_ranker

    return export_ranker(checkpoint, cfg.section("palr").model, "ranker", out)
