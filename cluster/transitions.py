"""Item-to-item transitions: a first-order Markov baseline (what the last few items alone predict).

Fitted on each user's training part items[:-2] (never a valid/test target): count[a, b] = how often b directly
followed a. A user's candidates are ranked lexicographically: by the count after the LAST history item; ties
(and items never seen after it) by the count after the item before it; ... up to `recent` items back; then by
training popularity; then by item index. Nothing is learned beyond counting. It answers how much of the next
item the most recent items predict - the information a short prompt gives a generative recommender - and is
a reference row of `bench quality`.

Checkpoint: a folder like the other baselines' (config.json, id_table.json) + `transitions.safetensors`
(src, dst, count, popularity int64 tensors), written to a temp folder renamed into place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .baselines import _load_checkpoint, _save_checkpoint, fit_most_popular, load_corpus, train_sequences
from .evaluator import UserBatch

FILE = "transitions.safetensors"


def fit_transitions(train: list[np.ndarray], num_items: int) -> dict[str, np.ndarray]:
    """Counts of direct successions a -> b over the training sequences (sorted by (a, b)) + popularity."""
    pairs = [np.stack([s[:-1], s[1:]], axis=1) for s in train if len(s) >= 2]
    flat = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
    keys, counts = np.unique(flat[:, 0] * num_items + flat[:, 1], return_counts=True)
    return {"src": keys // num_items, "dst": keys % num_items, "count": counts.astype(np.int64),
            "popularity": fit_most_popular(train, num_items)}  # fmt: skip


class TransitionScorer:
    """Ranks every item by (successor count of the last item, of the one before, ..., popularity, index)."""

    def __init__(
        self, fit: dict[str, np.ndarray], top_k: int, exclude_history: bool = False, recent: int = 3
    ):
        if recent < 1:
            raise ValueError(f"recent={recent} must be >= 1")
        self.top_k, self.exclude_history, self.recent = top_k, exclude_history, recent
        self.num_items = len(fit["popularity"])
        self.dst, self.count = fit["dst"], fit["count"].astype(np.float64)
        self.indptr = np.searchsorted(fit["src"], np.arange(self.num_items + 1))  # CSR rows of src
        # One level per history position: a level's largest possible value stays below one unit of the next.
        self.base = float(self.count.max(initial=0.0)) + 1.0
        pop = fit["popularity"].astype(np.float64)
        self.prior = pop / (pop.max(initial=0.0) + 1.0)  # in [0, 1): below every count level

    def _scores(self, hist: np.ndarray) -> np.ndarray:
        score = self.prior.copy()
        # Oldest of the window first, weight base**level: the last item's counts decide, the others break ties.
        for level, item in enumerate(hist[-self.recent :]):
            lo, hi = self.indptr[item], self.indptr[item + 1]
            score[self.dst[lo:hi]] += self.count[lo:hi] * self.base**level
        if self.exclude_history:
            score[hist] = -np.inf
        return score

    def rank(self, batch: UserBatch) -> np.ndarray:
        out = np.full((len(batch.histories), self.top_k), -1, dtype=np.int64)
        for row, hist in enumerate(batch.histories):
            score = self._scores(np.asarray(hist, dtype=np.int64))
            top = np.lexsort((np.arange(self.num_items), -score))[: self.top_k]  # ties: lower item index
            keep = top[np.isfinite(score[top])]
            out[row, : len(keep)] = keep
        return out


def save_transitions(out: str | Path, fit: dict[str, np.ndarray], item_ids: list[str]) -> Path:
    def payload(d: Path) -> None:
        save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in fit.items()}, str(d / FILE))

    return _save_checkpoint(Path(out), {"model": "transitions"}, item_ids, payload)


@dataclass
class TransitionFactory:
    checkpoint: str
    top_k: int = 20
    exclude_history: bool = False
    recent: int = 3

    def __call__(self) -> TransitionScorer:
        _, item_ids = _load_checkpoint(self.checkpoint, "transitions")
        fit = {k: v.numpy() for k, v in load_file(str(Path(self.checkpoint) / FILE)).items()}
        if len(fit["popularity"]) != len(item_ids):
            raise ValueError(f"{self.checkpoint}: {len(fit['popularity'])} counts for {len(item_ids)} items")
        return TransitionScorer(fit, self.top_k, self.exclude_history, self.recent)


def transitions_for(
    dataset_dir: str | Path, out: str | Path, top_k: int, exclude_history: bool
) -> TransitionFactory:
    """Transitions fitted on a processed dataset's training split (items[:-2]) and saved under `out`."""
    seqs, vocab, _ = load_corpus(dataset_dir)
    fit = fit_transitions(train_sequences(seqs, vocab), len(vocab))
    return TransitionFactory(str(save_transitions(out, fit, list(vocab))), top_k, exclude_history)
