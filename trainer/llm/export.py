"""A trained LLM ranker (PALR, DMPO/SFT policy) as a plain causal LM: base + LoRA merged, from a checkpoint
(`export_ranker`) or from a live engine at the end of training (`export_engine`)."""

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


def export_engine(strategy: Any, engine: Any, model_cfg: Any, out_dir: str | Path) -> Path | None:
    """In training: gather an engine's weights (any ZeRO stage), fold LoRA in, save an HF folder on rank 0.

    Collective: every rank must call it. Returns the folder on rank 0, None elsewhere.
    """
    from fusionrec.trainer.models.causal_lm import build_ranker, export_merged

    state = strategy.full_state_dict(engine)
    out = None
    if strategy.is_rank0:
        fresh, tok = build_ranker(model_cfg)
        fresh.load_state_dict(state)
        out = export_merged(fresh, tok, out_dir)
    strategy.barrier()
    return out
