"""The `[idgenrec]` section: models, tokenizer, prompts, Algorithm 1, the alternation schedule. Torch-free
(a test imports it in a fresh process), so loading a config never loads torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from fusionrec.trainer.idgen.config import IDGenConfig
from fusionrec.trainer.model_config import ModelConfig, TokenizerConfig
from fusionrec.trainer.prompts import PromptConfig


@dataclass
class CollateConfig:
    """Sizes of the collated tensors."""

    max_source_len: int = 128  # ID-generator encoder input (item text) tokens; IDGenRec used 256
    check_positions: bool = True  # verify every soft position holds exactly the item's ID tokens

    def __post_init__(self) -> None:
        if self.max_source_len < 2:
            raise ValueError(f"collate.max_source_len must be >= 2, got {self.max_source_len}")


@dataclass
class RankingConfig:
    """Constrained beam-search ranking of valid/test users (HR/NDCG@k from the top-k items)."""

    num_beams: int = 20
    top_k: int = 20
    ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    exclude_history: bool = False
    batch_size: int = 32
    max_users: int = 0  # 0 = every user of the split

    def __post_init__(self) -> None:
        if not 1 <= self.top_k <= self.num_beams:
            raise ValueError(f"eval.top_k={self.top_k} must be in [1, eval.num_beams={self.num_beams}]")
        if not self.ks or max(self.ks) > self.top_k or min(self.ks) < 1:
            raise ValueError(f"eval.ks={self.ks} must be cut-offs in [1, top_k={self.top_k}]")
        if self.batch_size < 1 or self.max_users < 0:
            raise ValueError(
                f"eval.batch_size={self.batch_size} must be >= 1, max_users={self.max_users} >= 0"
            )


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
    initial_ids: str = "title"  # "title" | "generator" | "collab" (not in the paper: trainer/idgen/collab_ids.py)
    # collab IDs: clusters per level = leaf size. Each level needs this many distinct short title words, so a
    # small catalogue needs a small value; on Beauty (12,101 items) 256 (2-word IDs) beat 32 (3-5 words) at 15
    # CPU minutes (bench quality --variant collab_b256, docs/evaluation.md).
    collab_branching: int = 32
    collab_dim: int = 32  # collab IDs: spectral embedding width
    title_words: int = 3
    user_title_words: int = 3  # words of a title user ID (prompt.use_user_id with initial_ids = "title")
    warmup_steps: int = 0  # ID-generator distillation of the initial table (text -> ID) before round 0
    # The generator's lr during that distillation (0 = id_lr). id_lr is sized for the gentle soft-ID phase;
    # a from-scratch generator does not learn the table at it (warm-up loss 9.8 -> 7.5 in 300 steps at 1e-4).
    warmup_lr: float = 0.0
    # Recommender loss as a softmax over the trie children of each teacher-forced prefix (the item-level
    # likelihood the constrained beam search ranks by) instead of over the whole vocabulary. Not in the
    # paper; see trie_token_nll. Decoding of such a model renormalises the same way (model.config).
    trie_softmax: bool = False
    # With trie_softmax, the recommender's head computes only the logit columns of the tokens the ID trie
    # emits (the loss reads no other; the same loss and gradients). false: the full [V] head, the baseline of
    # `bench rec_head`. Always the full head under ZeRO-3 (the column head reads an unpartitioned weight).
    emitted_head: bool = True

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
        if self.warmup_lr < 0:
            raise ValueError(f"idgenrec.warmup_lr must be >= 0 (0 = id_lr), got {self.warmup_lr}")
        if not self.id_lr > 0:
            raise ValueError(f"idgenrec.id_lr must be > 0, got {self.id_lr}")
        if self.initial_ids not in ("title", "generator", "collab"):
            raise ValueError(
                f"idgenrec.initial_ids must be 'title', 'generator' or 'collab', got {self.initial_ids!r}"
            )
        if self.collab_branching < 2 or self.collab_dim < 1:
            raise ValueError(
                f"idgenrec.collab_branching must be >= 2 and collab_dim >= 1, got "
                f"{self.collab_branching}, {self.collab_dim}"
            )
        if self.initial_ids == "collab" and self.prompt.use_user_id:
            raise ValueError("idgenrec.initial_ids = 'collab' has no user IDs: set prompt.use_user_id = false")
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
