"""A trained LLM ranker (PALR, DMPO/SFT policy) as a plain causal LM: base + LoRA merged."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def export_ranker(checkpoint: Path, model_cfg: Any, engine: str, out: Path) -> dict[str, Path]:
    """Rebuild the ranker as trained (base + LoRA), load the checkpoint's weights, merge, save `out/<engine>`."""
    from fusionrec.trainer.checkpoint_reader import load_weights, verify_checkpoint
    from fusionrec.trainer.models.causal_lm import build_ranker, export_merged

    verify_checkpoint(checkpoint)
    model, tokenizer = build_ranker(model_cfg)
    load_weights(model, checkpoint, engine)
    return {engine: export_merged(model, tokenizer, out / engine)}  # temp dir + rename inside
