"""A SASRec checkpoint's model for scoring, read through trainer.checkpoint_reader (no DeepSpeed)."""

from __future__ import annotations

from pathlib import Path

from fusionrec.trainer.checkpoint_reader import CheckpointError, load_weights, read_module_state
from fusionrec.trainer.models.sasrec import SASRec, SASRecConfig


def load_sasrec_checkpoint(checkpoint: str | Path) -> tuple[SASRec, list[str]]:
    """(model in eval mode, item vocabulary) from a ``step-N`` checkpoint of `fusionrec train sasrec`."""
    state = read_module_state(checkpoint)
    if "model_config" not in state or "item_ids" not in state:
        raise CheckpointError(
            f"checkpoint {checkpoint}: not a SASRec checkpoint (module state {sorted(state)})"
        )
    model = SASRec(SASRecConfig(**state["model_config"]))
    if model.cfg.num_items != len(state["item_ids"]):
        raise CheckpointError(
            f"checkpoint {checkpoint}: {model.cfg.num_items} items vs {len(state['item_ids'])} ids"
        )
    return load_weights(model, checkpoint, "model").eval(), list(state["item_ids"])
