"""Token-level conventions every seq2seq recipe shares: the ignored label, right padding, the summed NLL."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # label padding: positions the loss never sees (torch's cross_entropy default)


def pad_right(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Right-padded [len(rows), max(1, longest)] int64 tensor (right padding keeps positions exact)."""
    out = np.full((len(rows), max([1, *(len(r) for r in rows)])), value, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.from_numpy(out)


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token NLL over non-ignored labels, their count). An all-padding batch gives (0, 0) with a
    graph, so DeepSpeed's backward still runs on every rank."""
    nll = F.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return nll, (labels != IGNORE_INDEX).sum()


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL over label tokens; 0 for a batch without labels (never NaN)."""
    total, count = token_nll(logits, labels)
    return total / count.clamp(min=1)
