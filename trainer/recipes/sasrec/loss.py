"""SASRec's next-item loss, shared by the Trainer recipe and the in-process baseline loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sasrec_loss(
    hidden: torch.Tensor, weights: torch.Tensor, lab: torch.Tensor, neg: torch.Tensor | None
) -> torch.Tensor:
    """Mean next-item loss over the labelled positions: full-softmax CE, or (``neg`` given) the paper's BCE
    with one sampled negative per position."""
    mask = lab >= 0
    h, pos = hidden[mask], lab[mask]
    if neg is None:
        return F.cross_entropy(h @ weights.T, pos)
    pos_logit = (h * weights[pos]).sum(-1)
    neg_logit = (h * weights[neg]).sum(-1)
    return F.softplus(-pos_logit).mean() + F.softplus(neg_logit).mean()
