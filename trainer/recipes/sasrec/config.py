"""The `[sasrec]` section: torch-free, so `fusionrec prepare` and config validation stay fast."""

from __future__ import annotations

from dataclasses import dataclass

LOSSES = ("ce", "bce")


@dataclass
class SASRecRecipeConfig:
    """SASRec on one processed dataset of a prepared corpus (or a raw P5 folder).

    ``data``: ``CORPUS/processed/<name>`` folder, a ``sequences.parquet``, or a P5 folder; "" = the run's
    corpus when it has exactly one dataset. Training sequences are each user's items[:-2] (leave-one-out);
    validation ranks items[-2] of every user against all items (HR/NDCG@10, history not masked).
    ``loss``: "ce" (full-softmax cross-entropy) or "bce" (the paper's one sampled negative per position).
    """

    data: str = ""
    hidden: int = 64
    num_blocks: int = 2
    num_heads: int = 1
    max_len: int = 50
    dropout: float = 0.2
    loss: str = "ce"
    epochs: int = 30
    val_users: int = 0  # 0 = every validation user
    val_batch_size: int = 512

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"sasrec.loss must be one of {LOSSES}, got {self.loss!r}")
        for name in ("hidden", "num_blocks", "num_heads", "max_len", "epochs", "val_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"sasrec.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden % self.num_heads:
            raise ValueError(f"sasrec.hidden={self.hidden} must be a multiple of num_heads={self.num_heads}")
        if not 0.0 <= self.dropout < 1.0 or self.val_users < 0:
            raise ValueError(
                f"sasrec.dropout={self.dropout} must be in [0, 1), val_users={self.val_users} >= 0"
            )
