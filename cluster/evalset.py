"""What an evaluation ranks: the users of one split (histories + targets) and the scorer protocol."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pyarrow as pa


@dataclass
class EvalSet:
    """Users to evaluate: history (item indices, oldest first) and one target each, over `item_ids`."""

    name: str
    item_ids: list[str]  # the item vocabulary: index i <-> item_ids[i]
    user_ids: list[str]
    flat: np.ndarray  # int64, all histories concatenated
    offsets: np.ndarray  # int64 [U + 1]
    targets: np.ndarray  # int64 [U]
    skipped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.user_ids)
        if len(self.targets) != n or len(self.offsets) != n + 1:
            raise ValueError(
                f"{self.name}: {n} users but {len(self.targets)} targets, {len(self.offsets)} offsets"
            )

    def __len__(self) -> int:
        return len(self.user_ids)

    def history(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i] : self.offsets[i + 1]]

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for arr in (self.flat, self.offsets, self.targets):
            h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
        h.update("\0".join(self.user_ids).encode())
        h.update("\0".join(self.item_ids).encode())
        return h.hexdigest()

    @classmethod
    def from_sequences(
        cls,
        sequences: pa.Table,
        split: str = "test",
        name: str = "data",
        item_ids: Sequence[str] | None = None,
    ) -> EvalSet:
        """Leave-one-out targets from a `sequences.parquet` table (user_id, item_ids[, timestamps]).

        test: target items[-1], history items[:-1]; valid: target items[-2], history items[:-2]. Users too
        short to have that split (< 3 items) are counted in `skipped`, never silently dropped.
        """
        if split not in ("test", "valid"):
            raise ValueError(f"split must be 'test' or 'valid', got {split!r}")
        for col in ("user_id", "item_ids"):
            if col not in sequences.column_names:
                raise ValueError(
                    f"{name}: sequences table has no column {col!r} (has {sequences.column_names})"
                )
        seqs = sequences["item_ids"].to_pylist()
        vocab = list(item_ids) if item_ids is not None else sorted({i for s in seqs for i in s})
        index = {item: i for i, item in enumerate(vocab)}
        cut = 1 if split == "test" else 2
        users, hist, targets, skipped = [], [], [], 0
        for user, seq in zip(sequences["user_id"].to_pylist(), seqs, strict=True):
            if len(seq) < 3:
                skipped += 1
                continue
            try:
                codes = [index[i] for i in seq[: len(seq) - cut + 1]]
            except KeyError as err:
                raise ValueError(
                    f"{name}: user {user!r} has item {err.args[0]!r} missing from the item table"
                ) from None
            users.append(user)
            hist.append(codes[:-1])
            targets.append(codes[-1])
        offsets = np.zeros(len(hist) + 1, dtype=np.int64)
        np.cumsum([len(h) for h in hist], out=offsets[1:])
        flat = np.fromiter((c for h in hist for c in h), dtype=np.int64, count=int(offsets[-1]))
        sk = {"fewer_than_3_items": skipped} if skipped else {}
        return cls(name, vocab, users, flat, offsets, np.asarray(targets, dtype=np.int64), sk)


@dataclass
class UserBatch:
    """What a scorer sees: users and their histories (never the targets)."""

    user_ids: list[str]
    histories: list[np.ndarray]


class Scorer(Protocol):
    """A loaded model. `rank` returns [B, top_k] item indices, best first; -1 pads a short list."""

    top_k: int

    def rank(self, batch: UserBatch) -> np.ndarray: ...


ScorerFactory = Callable[[], Scorer]  # picklable; called once per actor (loads checkpoint, ID table, trie)
