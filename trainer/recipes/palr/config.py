"""The `[palr]` section: torch-free, so loading a config never imports torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from fusionrec.trainer.model_config import CausalLMConfig
from fusionrec.trainer.recipes.palr.data import PALRConfig

RETRIEVERS = ("sasrec", "cooccurrence", "popular")


@dataclass
class PALRRecipeConfig:
    data_dir: str = ""  # processed dataset: items.parquet + sequences.parquet
    retriever: str = "sasrec"  # sasrec (built by the launch layer) | cooccurrence | popular
    retriever_checkpoint: str = ""  # a saved SASRec folder; "" = train one on the training split (rank 0)
    retriever_epochs: int = 8  # SASRec-CE epochs when trained here (the measured fast Beauty setting)
    epochs: int = 1
    model: CausalLMConfig = field(default_factory=CausalLMConfig)
    palr: PALRConfig = field(default_factory=PALRConfig)

    def __post_init__(self) -> None:
        if not self.data_dir:
            raise ValueError("recipe.data_dir is required (a processed dataset folder)")
        if self.retriever not in RETRIEVERS:
            raise ValueError(f"palr.retriever={self.retriever!r}: use one of {', '.join(RETRIEVERS)}")
        if self.retriever_checkpoint and self.retriever != "sasrec":
            raise ValueError(
                f"palr.retriever_checkpoint is a SASRec folder but palr.retriever={self.retriever!r}"
            )
        if self.epochs < 1 or self.retriever_epochs < 1:
            raise ValueError(
                f"palr.epochs={self.epochs} and palr.retriever_epochs={self.retriever_epochs} must be >= 1"
            )
