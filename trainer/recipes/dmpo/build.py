"""`fusionrec train dmpo` and `fusionrec export` of a DMPO/SFT run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fusionrec.trainer.worker import Built


def build(cfg: Any, strategy: Any) -> Built:
    """DMPO (paper 003): stage `sft`, then stage `dmpo` from the merged SFT export (frozen reference)."""
    from fusionrec.trainer.recipes.dmpo.module import DMPOModule

    return Built(module=DMPOModule(cfg.required_section("dmpo")), train_loader=[])


def export(checkpoint: Path, cfg: Any, out: Path) -> dict[str, Path]:
    """`out/policy`: the DMPO/SFT policy with LoRA merged into the base weights (a plain causal LM)."""
    from fusionrec.trainer.llm.export import export_ranker

    return export_ranker(checkpoint, cfg.section("dmpo").model, "policy", out)
