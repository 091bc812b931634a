"""The `[genrec]` section: torch-free, so loading a config never imports torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fusionrec.data_pipeline.records import SPLITS
from fusionrec.trainer.model_config import ModelConfig, TokenizerConfig

PretrainSource = Literal["sequences", "prefixes"]


@dataclass
class GenRecDataConfig:
    """How sequences become encoder inputs."""

    max_history: int = 50  # most recent items kept in the input
    max_input_tokens: int = 512  # the paper's maximum input length
    user_prefix: str = "user_"
    item_prefix: str = "item_"
    pretrain_source: PretrainSource = "sequences"

    def __post_init__(self) -> None:
        if self.max_history < 1:
            raise ValueError(f"genrec.data.max_history must be >= 1, got {self.max_history}")
        if self.max_input_tokens < 4:
            raise ValueError(f"genrec.data.max_input_tokens must be >= 4, got {self.max_input_tokens}")
        if not self.user_prefix or not self.item_prefix or self.user_prefix == self.item_prefix:
            raise ValueError(
                f"genrec.data.user_prefix={self.user_prefix!r} and item_prefix={self.item_prefix!r} must be "
                "non-empty and different"
            )
        if any(c.isspace() for c in self.user_prefix + self.item_prefix):
            raise ValueError(
                "genrec.data.user_prefix/item_prefix must not contain whitespace (one word per ID)"
            )
        if self.pretrain_source not in ("sequences", "prefixes"):
            raise ValueError(
                f"genrec.data.pretrain_source must be 'sequences' or 'prefixes', got {self.pretrain_source!r}"
            )


def _tiny_bart() -> ModelConfig:
    return ModelConfig(name_or_path="tiny-bart")


@dataclass
class GenRecConfig:
    """The genrec recipe. ``model.name_or_path``: ``tiny-bart`` or a BART hub id / folder (paper:
    ``facebook/bart-base``). ``tokenizer_from_model``: load the model's own tokenizer (paper: the BART
    tokenizer); otherwise ``tokenizer`` (a folder, or trained on the ID words when ``path`` is empty)."""

    model: ModelConfig = field(default_factory=_tiny_bart)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    tokenizer_from_model: bool = False
    data: GenRecDataConfig = field(default_factory=GenRecDataConfig)
    datasets: list[str] = field(default_factory=list)  # empty = every dataset of the corpus
    pretrain_epochs: int = 1
    pretrain_steps: int = 0  # > 0 overrides pretrain_epochs
    finetune_epochs: int = 1
    finetune_steps: int = 0  # > 0 overrides finetune_epochs
    finetune_splits: list[str] = field(default_factory=lambda: ["train"])
    shuffle: bool = True
    num_workers: int = 0
    # evaluation (beam search over the compiled trie of all items)
    eval_split: str = "valid"
    eval_batch_size: int = 16
    eval_max_samples: int = 0  # 0 = all
    num_beams: int = 20
    top_k: int = 20
    eval_ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20])
    exclude_history: bool = False  # the paper ranks all items, history included
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("pretrain_epochs", "pretrain_steps", "finetune_epochs", "finetune_steps", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"genrec.{name} must be >= 0, got {getattr(self, name)}")
        if self.finetune_epochs == 0 and self.finetune_steps == 0:
            raise ValueError("genrec: finetuning needs finetune_epochs or finetune_steps > 0")
        if not self.finetune_splits or any(s not in ("train", "valid") for s in self.finetune_splits):
            raise ValueError(
                f"genrec.finetune_splits={self.finetune_splits!r}: a non-empty subset of ['train', 'valid'] "
                "(training on test targets would leak them)"
            )
        if self.eval_split not in SPLITS:
            raise ValueError(f"genrec.eval_split must be one of {SPLITS}, got {self.eval_split!r}")
        if not 1 <= self.top_k <= self.num_beams:
            raise ValueError(f"genrec.top_k={self.top_k} must be in [1, num_beams={self.num_beams}]")
        if not self.eval_ks or min(self.eval_ks) < 1 or max(self.eval_ks) > self.top_k:
            raise ValueError(f"genrec.eval_ks={self.eval_ks} must be cut-offs in [1, top_k={self.top_k}]")
        if self.eval_batch_size < 1 or self.eval_max_samples < 0:
            raise ValueError(
                f"genrec.eval_batch_size={self.eval_batch_size} must be >= 1 and eval_max_samples >= 0"
            )
        if self.model.name_or_path == "tiny-t5":
            raise ValueError(
                "genrec.model.name_or_path: GenRec is BART-based; use 'tiny-bart' or a BART model"
            )

    def phase_lengths(self) -> list[tuple[str, dict[str, int]]]:
        out = []
        for name, epochs, steps in (
            ("pretrain", self.pretrain_epochs, self.pretrain_steps),
            ("finetune", self.finetune_epochs, self.finetune_steps),
        ):
            if steps > 0:
                out.append((name, {"steps": steps}))
            elif epochs > 0:
                out.append((name, {"epochs": epochs}))
        return out
