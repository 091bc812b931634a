"""DMPO: Direct Multi-Preference Optimisation (paper 003, eq. 3) and its reference log-probabilities.

    L = −log σ( β·[log π(y_w|x) − log π_ref(y_w|x)] − (1/k)·Σ_i β·[log π(y_l,i|x_i) − log π_ref(y_l,i|x_i)] )

The k negatives' log-ratios are averaged INSIDE the sigmoid — one sigmoid per prompt group, not k pairwise
DPO terms. With k = 1 this is exactly DPO's sigmoid loss. The reference model is the frozen SFT model: its
log-probs either come from a precomputed table (`precompute_reference`, the reference never stays in memory)
or are computed on the fly by the caller (e.g. the policy with its LoRA adapters disabled, which IS the SFT
model when the SFT adapter was merged before DMPO).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .scoring import EncodedPair, score_pairs


@dataclass
class DMPOConfig:
    """β (paper: DPO default 0.1), k negatives per prompt, and where reference log-probs come from."""

    beta: float = 0.1
    k: int = 3
    reference: str = "precomputed"  # precomputed | adapter-disabled

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"dmpo.beta must be > 0, got {self.beta}")
        if self.k < 1:
            raise ValueError(f"dmpo.k must be >= 1 negative, got {self.k}")
        if self.reference not in ("precomputed", "adapter-disabled"):
            raise ValueError(f"dmpo.reference={self.reference!r}: use 'precomputed' or 'adapter-disabled'")


@dataclass
class DMPOOutput:
    loss: torch.Tensor
    chosen_reward: torch.Tensor  # [B] β·logratio(y_w)
    rejected_reward: torch.Tensor  # [B] mean_i β·logratio(y_l,i)

    @property
    def accuracy(self) -> torch.Tensor:
        """Share of groups whose positive's implicit reward beats the negatives' average."""
        return (self.chosen_reward > self.rejected_reward).float().mean()


def dmpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> DMPOOutput:
    """Eq. 3 on summed sequence log-probs: chosen [B], rejected [B, k] (same for the reference)."""
    if policy_rejected.dim() != 2 or policy_rejected.shape != ref_rejected.shape:
        raise ValueError(
            f"rejected log-probs must be [B, k]: {policy_rejected.shape} vs {ref_rejected.shape}"
        )
    if policy_chosen.shape != (policy_rejected.shape[0],) or ref_chosen.shape != policy_chosen.shape:
        raise ValueError(f"chosen log-probs must be [B]: {policy_chosen.shape}, {ref_chosen.shape}")
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = (beta * (policy_rejected - ref_rejected)).mean(dim=-1)
    loss = -F.logsigmoid(chosen_reward - rejected_reward).mean()
    return DMPOOutput(
        loss=loss, chosen_reward=chosen_reward.detach(), rejected_reward=rejected_reward.detach()
    )


@dataclass
class EncodedGroup:
    """One DMPO training unit: (x, y_w) and k pairs (x_i, y_l,i), plus the reference's log-probs."""

    chosen: EncodedPair
    rejected: list[EncodedPair]
    ref_chosen: float | None = None
    ref_rejected: list[float] | None = None


def flatten_groups(groups: Sequence[EncodedGroup]) -> list[EncodedPair]:
    """[chosen_1, rej_1_1..rej_1_k, chosen_2, ...] — one forward pass over all 1 + k sequences per group."""
    flat: list[EncodedPair] = []
    for group in groups:
        flat.append(group.chosen)
        flat.extend(group.rejected)
    return flat


def split_flat(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `flatten_groups` on a [B·(1+k)] tensor → chosen [B], rejected [B, k]."""
    grid = values.view(-1, 1 + k)
    return grid[:, 0], grid[:, 1:]


@torch.no_grad()
def precompute_reference(
    ref_model: nn.Module, groups: Sequence[EncodedGroup], pad_id: int, batch_size: int = 8
) -> None:
    """Fill `ref_chosen`/`ref_rejected` of every group once with the frozen reference's log π_ref(y|x).

    After this the reference model can be freed: DMPO training then holds a single model in memory.
    """
    if not groups:
        raise ValueError("precompute_reference: no groups")
    k = len(groups[0].rejected)
    if any(len(g.rejected) != k for g in groups):
        raise ValueError("all DMPO groups must have the same number of negatives k")
    totals = score_pairs(ref_model, flatten_groups(groups), pad_id, batch_size=batch_size).total
    chosen, rejected = split_flat(totals, k)
    for group, c, r in zip(groups, chosen.tolist(), rejected.tolist(), strict=True):
        group.ref_chosen, group.ref_rejected = c, r
