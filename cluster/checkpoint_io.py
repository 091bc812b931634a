"""Reading an IDGenRec checkpoint for evaluation, in this process: the checkpoint folder, its verified
module state, the run's `[idgenrec]` section and prompt config, the run's tokenizer and the trained ID
generator. Used by the scorer (cluster/generative.py), the held-out ID tables (cluster/heldout_ids.py), the
zero-shot harness and the ID-generation actors (cluster/idgen_pool.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def _offline() -> None:
    """Before transformers is imported (driver or actor): no hub lookups (~46 s of retries each)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def checkpoint_path(checkpoint: str | Path) -> Path:
    """A checkpoint folder, or a run dir meaning its newest complete checkpoint."""
    from ..trainer.checkpoint_reader import resolve_checkpoint

    return resolve_checkpoint(checkpoint)


def module_state(checkpoint: str | Path) -> dict[str, Any]:
    """The IDGenRec module state of a verified checkpoint; a checkpoint without its ID table is an error."""
    from ..trainer.recipes.idgenrec.artefacts import verified_module_state

    return verified_module_state(checkpoint_path(checkpoint))


def run_config(checkpoint: str | Path) -> dict[str, Any]:
    """The run's resolved config (RUN/config.json beside RUN/checkpoints) as a dict."""
    path = checkpoint_path(checkpoint).parent.parent / "config.json"
    if not path.is_file():
        raise ValueError(
            f"{path}: missing; a checkpoint must sit in RUN/checkpoints/step-N of a fusionrec run"
        )
    return json.loads(path.read_text())


def run_section(checkpoint: str | Path) -> dict[str, Any]:
    """The `[idgenrec]` section of the run's resolved config (RUN/config.json beside RUN/checkpoints)."""
    section = run_config(checkpoint).get("idgenrec")
    if not isinstance(section, dict):
        path = checkpoint_path(checkpoint).parent.parent / "config.json"
        raise ValueError(f"{path}: no [idgenrec] section; {checkpoint} is not an IDGenRec run")
    return section


def _prompt_config(checkpoint: str | Path) -> Any:
    from ..trainer.prompts import PromptConfig

    return PromptConfig(**run_section(checkpoint).get("prompt", {}))


def load_checkpoint_tokenizer(checkpoint: str | Path) -> Any:
    """The run's tokenizer (shared by the recommender and the ID generator) from the checkpoint's state."""
    _offline()
    import tempfile

    from ..trainer.models.tokenizer import load_tokenizer

    state = module_state(checkpoint)
    with tempfile.TemporaryDirectory(prefix="fusionrec-tok-") as tmp:
        for name, text in state["tokenizer_files"].items():
            (Path(tmp) / name).write_text(text, encoding="utf-8")
        return load_tokenizer(tmp)


def load_id_generator(checkpoint: str | Path) -> tuple[torch.nn.Module, Any]:
    """(ID generator in eval mode, tokenizer) from a checkpoint, in this process (no process group)."""
    _offline()
    from ..trainer.checkpoint_reader import load_weights
    from ..trainer.models.seq2seq import ModelConfig, build_seq2seq

    path = checkpoint_path(checkpoint)
    state = module_state(path)
    if not (path / "id_generator").is_dir():
        raise ValueError(f"checkpoint {path}: no id_generator/ weights; zero-shot IDs cannot be generated")
    tokenizer = load_checkpoint_tokenizer(path)
    model = build_seq2seq(ModelConfig(**state["id_generator_config"]), tokenizer=tokenizer)
    load_weights(model, path, "id_generator")
    return model.eval(), tokenizer
