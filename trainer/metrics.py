"""Ranking metrics for leave-one-out evaluation (one relevant item per query): HR@k, NDCG@k, MRR, AUC.

Every metric here is a function of the target's 0-based rank r alone:

* HR@k   = 1[r < k]
* NDCG@k = 1[r < k] / log2(r + 2)      (one relevant item, so the ideal DCG is 1)
* MRR    = 1 / (r + 1)                 (0 when the target is not ranked)
* AUC    = (n - 1 - r) / (n - 1)       (n candidates: share of negatives ranked below the target)

so :class:`MetricSums` keeps a histogram of ranks (integer counts) instead of float sums. Merging partial
results from many evaluator actors adds integers, which is associative and exact: the merged metrics are
bit-for-bit the one-shot metrics, whatever the split or the merge order.

Two sources of ranks:

* ``MetricSums.from_topk(ranked_items, targets)``: the [B, k] item lists of a beam search. Ranks beyond k are
  unknown, so MRR is reported as ``MRR@k`` and AUC is not available.
* ``MetricSums.from_ranks(ranks, num_candidates)``: full all-item ranks (e.g. from scores over all items
  via :func:`ranks_from_scores`): exact MRR and AUC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

DEFAULT_KS = (5, 10, 20)


# ---------------------------------------------------------------------- ranks
def target_ranks(ranked_items: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based position of each target in its row of ``ranked_items`` [B, k]; -1 when absent.

    Rows may be padded with -1 (fewer than k items found). Raises ValueError on shape mismatch, a negative
    target, or an item listed twice in a row (a ranking cannot hold an item twice).
    """
    if ranked_items.dim() != 2 or targets.dim() != 1 or ranked_items.shape[0] != targets.shape[0]:
        raise ValueError(
            f"expected ranked_items [B, k] and targets [B], got {tuple(ranked_items.shape)} and {tuple(targets.shape)}"
        )
    if (targets < 0).any():
        row = int(torch.nonzero(targets < 0)[0, 0])
        raise ValueError(f"targets[{row}] = {int(targets[row])} is not an item index")
    srt = torch.sort(ranked_items, dim=1).values
    dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
    if dup.any():
        row, col = (int(v) for v in torch.nonzero(dup)[0])
        raise ValueError(f"ranked_items row {row} lists item {int(srt[row, col])} twice")
    hits = ranked_items == targets[:, None]
    return torch.where(hits.any(dim=1), hits.int().argmax(dim=1), -1)


def ranks_from_scores(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rank of each target among all candidates [B, N] scored higher-is-better.

    Ties are counted against the target (pessimistic), so a constant scorer gets no credit.
    """
    if scores.dim() != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(
            f"expected scores [B, N] and targets [B], got {tuple(scores.shape)} and {tuple(targets.shape)}"
        )
    if torch.isnan(scores).any():
        raise ValueError(f"scores row {int(torch.nonzero(torch.isnan(scores))[0, 0])} contains NaN")
    if (targets < 0).any() or (targets >= scores.shape[1]).any():
        raise ValueError(f"targets must be in [0, {scores.shape[1]}), got {targets.tolist()[:10]}...")
    target_scores = scores.gather(1, targets[:, None])
    return (scores >= target_scores).sum(dim=1) - 1


# ---------------------------------------------------------------------- per-query values (reference form)
def hit_at_k(ranks: torch.Tensor, k: int) -> torch.Tensor:
    return ((ranks >= 0) & (ranks < k)).double()


def ndcg_at_k(ranks: torch.Tensor, k: int) -> torch.Tensor:
    r = ranks.double()
    return torch.where((ranks >= 0) & (ranks < k), 1.0 / torch.log2(r + 2.0), torch.zeros_like(r))


def reciprocal_rank(ranks: torch.Tensor) -> torch.Tensor:
    r = ranks.double()
    return torch.where(ranks >= 0, 1.0 / (r + 1.0), torch.zeros_like(r))


def auc_from_rank(ranks: torch.Tensor, num_candidates: int) -> torch.Tensor:
    return (num_candidates - 1 - ranks.double()) / (num_candidates - 1)


# ---------------------------------------------------------------------- mergeable sums
@dataclass
class MetricSums:
    """Histogram of target ranks: mergeable exactly (see module docstring).

    ``depth`` ranks are resolved (top-k width, or the number of candidates for full ranks); a target not
    ranked within ``depth`` is a miss. ``num_candidates`` is set only for full ranks and enables AUC.
    """

    ks: tuple[int, ...] = DEFAULT_KS
    depth: int = 20
    num_candidates: int | None = None
    rank_counts: np.ndarray = field(default=None)  # [depth] int64
    misses: int = 0

    def __post_init__(self) -> None:
        self.ks = tuple(int(k) for k in self.ks)
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be positive cut-offs, got {self.ks}")
        if max(self.ks) > self.depth:
            raise ValueError(
                f"HR/NDCG@{max(self.ks)} needs rankings of depth >= {max(self.ks)}, got {self.depth}"
            )
        if self.num_candidates is not None and (self.num_candidates < 2 or self.num_candidates != self.depth):
            raise ValueError(
                f"num_candidates must be >= 2 and equal depth, got {self.num_candidates}/{self.depth}"
            )
        if self.rank_counts is None:
            self.rank_counts = np.zeros(self.depth, dtype=np.int64)
        self.rank_counts = np.asarray(self.rank_counts, dtype=np.int64)
        if self.rank_counts.shape != (self.depth,) or (self.rank_counts < 0).any() or self.misses < 0:
            raise ValueError(f"rank_counts must be {self.depth} non-negative counts")

    @classmethod
    def from_topk(
        cls, ranked_items: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = DEFAULT_KS
    ) -> MetricSums:
        """From [B, k] ranked item lists (e.g. ``BeamResult.items``) and [B] target item indices."""
        ranks = target_ranks(ranked_items, targets)
        return cls._from_rank_tensor(ranks, tuple(ks), ranked_items.shape[1], None)

    @classmethod
    def from_ranks(
        cls, ranks: torch.Tensor, num_candidates: int, ks: Sequence[int] = DEFAULT_KS
    ) -> MetricSums:
        """From full 0-based ranks among ``num_candidates`` items (exact MRR and AUC)."""
        if ranks.numel() and (ranks.min() < 0 or ranks.max() >= num_candidates):
            raise ValueError(f"full ranks must be in [0, {num_candidates}), got {ranks.min()}..{ranks.max()}")
        return cls._from_rank_tensor(ranks, tuple(ks), num_candidates, num_candidates)

    @classmethod
    def _from_rank_tensor(cls, ranks: torch.Tensor, ks, depth: int, num_candidates: int | None) -> MetricSums:
        ranks = ranks.reshape(-1).long().cpu()
        found = ranks[(ranks >= 0) & (ranks < depth)]
        counts = torch.bincount(found, minlength=depth).numpy().astype(np.int64)
        return cls(ks, depth, num_candidates, counts, int(ranks.numel() - found.numel()))

    @property
    def count(self) -> int:
        return int(self.rank_counts.sum()) + self.misses

    def merge(self, other: MetricSums) -> MetricSums:
        """Sum of two partial results (same ks, depth and candidate count)."""
        if (self.ks, self.depth, self.num_candidates) != (other.ks, other.depth, other.num_candidates):
            raise ValueError(
                f"cannot merge MetricSums(ks={self.ks}, depth={self.depth}, n={self.num_candidates}) with "
                f"(ks={other.ks}, depth={other.depth}, n={other.num_candidates})"
            )
        return MetricSums(
            self.ks,
            self.depth,
            self.num_candidates,
            self.rank_counts + other.rank_counts,
            self.misses + other.misses,
        )

    def __add__(self, other: MetricSums) -> MetricSums:
        return self.merge(other)

    def __radd__(self, other: int | MetricSums) -> MetricSums:
        if isinstance(other, int) and other == 0:  # so that sum(parts) works
            return self
        return other.merge(self)

    def to_dict(self) -> dict[str, float]:
        """``count``, ``HR@k``, ``NDCG@k`` for each k, ``MRR`` (``MRR@depth`` for top-k lists), ``AUC``."""
        n = self.count
        if n == 0:
            raise ValueError("no queries were evaluated")
        ranks = np.arange(self.depth, dtype=np.float64)
        c = self.rank_counts.astype(np.float64)
        out: dict[str, float] = {"count": float(n)}
        for k in self.ks:
            out[f"HR@{k}"] = float(c[:k].sum() / n)
        for k in self.ks:
            out[f"NDCG@{k}"] = float(np.dot(c[:k], 1.0 / np.log2(ranks[:k] + 2.0)) / n)
        mrr_key = "MRR" if self.num_candidates is not None else f"MRR@{self.depth}"
        out[mrr_key] = float(np.dot(c, 1.0 / (ranks + 1.0)) / n)
        if self.num_candidates is not None:
            out["AUC"] = float(np.dot(c, self.num_candidates - 1 - ranks) / ((self.num_candidates - 1) * n))
        return out
