"""The `[idgenrec]` section: models, tokenizer, prompts, Algorithm 1, the alternation schedule.

Not yet torch-free: three of its sub-sections are defined beside torch code in modules owned by other work
(``IDGenConfig`` in trainer/idgen/generator.py, ``RankingConfig`` in artefacts.py, ``CollateConfig`` in
data.py, which artefacts.py imports); moving those three dataclasses into this file makes it torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fusionrec.trainer.idgen.generator import IDGenConfig
from fusionrec.trainer.model_config import ModelConfig, TokenizerConfig
from fusionrec.trainer.prompts import PromptConfig
from fusionrec.trainer.recipes.idgenrec.artefacts import RankingConfig
from fusionrec.trainer.recipes.idgenrec.data import CollateConfig


@dataclass
class IDGenRecDataConfig:
    """Where the samples and item texts come from (a prepared corpus) and how they are loaded."""

    corpus: str = ""
    seed: int = 0
    num_workers: int = 0
    max_train_samples: int | None = None
    max_valid_samples: int | None = None
    bucket_window: int = 0  # > 1: training batches regrouped by prompt length within this many batches
    collate: CollateConfig = field(default_factory=CollateConfig)


@dataclass
class IDGenRecConfig:
    """The ``[idgenrec]`` section: models, tokenizer, prompts, Algorithm 1, the alternation schedule."""

    data: IDGenRecDataConfig = field(default_factory=IDGenRecDataConfig)
    recommender: ModelConfig = field(default_factory=ModelConfig)
    id_generator: ModelConfig = field(default_factory=lambda: ModelConfig(seed=1))
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    pretrained_tokenizer: str = ""  # hub id or folder (e.g. "t5-small"); empty: tokenizer.* (path or train)
    # Keep only the pieces the corpus texts/templates/initial IDs use (Unigram source; same segmentation,
    # ids remapped): a smaller embedding + LM head, so a faster step for small models.
    reduce_vocab: bool = False
    prompt: PromptConfig = field(default_factory=PromptConfig)
    idgen: IDGenConfig = field(default_factory=IDGenConfig)
    eval: RankingConfig = field(default_factory=RankingConfig)
    rounds: int = 3
    order: list[str] = field(default_factory=lambda: ["id", "rec"])
    id_epochs: int = 1
    id_steps: int = 0  # > 0: the ID phase is this many optimizer steps instead of id_epochs
    rec_epochs: int = 10
    rec_steps: int = 0
    id_lr: float = 1e-4
    initial_ids: str = "title"  # "title" | "generator"
    title_words: int = 3
    user_title_words: int = 3  # words of a title user ID (prompt.use_user_id with initial_ids = "title")
    warmup_steps: int = 0  # ID-generator distillation of the initial table (text -> ID) before round 0
    # Recommender loss as a softmax over the trie children of each teacher-forced prefix (the item-level
    # likelihood the constrained beam search ranks by) instead of over the whole vocabulary. Not in the
    # paper; see trie_token_nll. Decoding of such a model renormalises the same way (model.config).
    trie_softmax: bool = False

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"idgenrec.rounds must be >= 1, got {self.rounds}")
        if sorted(self.order) not in (["id", "rec"], ["rec"]):
            raise ValueError(
                f"idgenrec.order must be a permutation of ['id', 'rec'] (or ['rec']: the recommender alone "
                f"on fixed initial IDs), got {self.order}"
            )
        for key in ("id_epochs", "rec_epochs"):
            if getattr(self, key) < 1:
                raise ValueError(f"idgenrec.{key} must be >= 1, got {getattr(self, key)}")
        if min(self.id_steps, self.rec_steps, self.warmup_steps) < 0:
            raise ValueError("idgenrec.id_steps, rec_steps and warmup_steps must be >= 0")
        if not self.id_lr > 0:
            raise ValueError(f"idgenrec.id_lr must be > 0, got {self.id_lr}")
        if self.initial_ids not in ("title", "generator"):
            raise ValueError(f"idgenrec.initial_ids must be 'title' or 'generator', got {self.initial_ids!r}")
        if self.title_words < 1:
            raise ValueError(f"idgenrec.title_words must be >= 1, got {self.title_words}")
        if self.user_title_words < 1:
            raise ValueError(f"idgenrec.user_title_words must be >= 1, got {self.user_title_words}")
        if self.data.bucket_window < 0:
            raise ValueError(f"idgenrec.data.bucket_window must be >= 0, got {self.data.bucket_window}")
        if self.reduce_vocab and not (self.pretrained_tokenizer or self.tokenizer.path):
            raise ValueError(
                "idgenrec.reduce_vocab needs a source tokenizer: set idgenrec.pretrained_tokenizer (a folder)"
            )

    def phase_length(self, name: str) -> dict[str, int]:
        steps = {"id": self.id_steps, "rec": self.rec_steps}[name]
        return {"steps": steps} if steps else {"epochs": {"id": self.id_epochs, "rec": self.rec_epochs}[name]}
