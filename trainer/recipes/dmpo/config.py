"""The `[dmpo]` section: torch-free, so loading a config never imports torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from fusionrec.trainer.model_config import CausalLMConfig


@dataclass
class DMPOConfig:
    """β (paper: DPO default 0.1), k negatives per prompt, and where reference log-probs come from."""

    beta: float = 0.1
    k: int = 3
    reference: str = "precomputed"  # precomputed (once, then freed) | model (frozen reference engine)

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"dmpo.beta must be > 0, got {self.beta}")
        if self.k < 1:
            raise ValueError(f"dmpo.k must be >= 1 negative, got {self.k}")
        if self.reference not in ("precomputed", "model"):
            raise ValueError(f"dmpo.reference={self.reference!r}: use 'precomputed' or 'model'")



@dataclass
class DMPORecipeConfig:
    """Everything the dmpo recipe needs: which stage, files, epochs, the model and the DMPO loss."""

    stage: str = "dmpo"  # sft | dmpo
    sft_file: str = ""
    dpo_file: str = ""  # rec_<domain>_dpo_ranking_<k>.json (k consecutive rows per prompt group)
    limit: int = 0  # use only the first N SFT records / DMPO groups (0 = all)
    epochs: int = 1
    model: CausalLMConfig = field(default_factory=CausalLMConfig)
    dmpo: DMPOConfig = field(default_factory=DMPOConfig)

    def __post_init__(self) -> None:
        if self.stage not in ("sft", "dmpo"):
            raise ValueError(f"dmpo.stage={self.stage!r}: use 'sft' or 'dmpo'")
        needed = self.sft_file if self.stage == "sft" else self.dpo_file
        if not needed:
            raise ValueError(f"dmpo.stage={self.stage!r} needs dmpo.{self.stage.replace('dmpo', 'dpo')}_file")
        if self.limit < 0 or self.epochs < 1:
            raise ValueError(f"dmpo.limit={self.limit} must be >= 0 and dmpo.epochs={self.epochs} >= 1")
