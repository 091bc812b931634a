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
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fusionrec.trainer.llm.scoring import EncodedPair, score_pairs
from torch import nn


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


def collate_groups(groups: Sequence[EncodedGroup], pad_id: int) -> dict[str, torch.Tensor]:
    """Model inputs for all 1 + k sequences of each group, plus precomputed reference log-probs if any."""
    from fusionrec.trainer.llm.scoring import collate_pairs

    batch = collate_pairs(flatten_groups(groups), pad_id)
    if all(g.ref_chosen is not None for g in groups):
        batch["ref_chosen"] = torch.tensor([g.ref_chosen for g in groups])
        batch["ref_rejected"] = torch.tensor([g.ref_rejected for g in groups])
    return batch


def group_logps(
    model: nn.Module, batch: dict[str, torch.Tensor], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer log-probs → chosen [B], rejected [B, k] (one forward over the flattened batch)."""
    from fusionrec.trainer.llm.scoring import answer_logprobs

    return split_flat(answer_logprobs(model, batch).total, k)


def auc(pos_scores: Sequence[float], neg_scores: Sequence[float]) -> float:
    """ROC AUC = P(score(pos) > score(neg)) + ½·P(tie), over all pos × neg pairs (Mann–Whitney U)."""
    if not pos_scores or not neg_scores:
        raise ValueError("auc needs at least one positive and one negative score")
    pos = torch.tensor(pos_scores, dtype=torch.float64)
    neg = torch.tensor(neg_scores, dtype=torch.float64)
    everything = torch.cat([pos, neg])
    # Average ranks with ties: rank = (#less) + (#equal + 1) / 2, computed by sorting.
    sorted_vals, _ = everything.sort()
    less = torch.searchsorted(sorted_vals, pos, right=False).double()
    leq = torch.searchsorted(sorted_vals, pos, right=True).double()
    ranks = less + (leq - less + 1) / 2
    u = ranks.sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


@dataclass
class AUCResult:
    auc: float  # global ROC AUC over preferred (label 1) vs dispreferred (label 0) answer scores
    pairwise: float  # share of records whose preferred answer outscores the dispreferred one (ties ½)
    n: int
    truncated: int  # prompts whose oldest history items were dropped to fit the context window
    pos: list[float] = field(default_factory=list)  # per record, in record order: for intervals
    neg: list[float] = field(default_factory=list)


def auc_interval(
    res: AUCResult, other: AUCResult | None = None, resamples: int = 1000, seed: int = 0
) -> list[float]:
    """95% percentile bootstrap interval over records of `res`'s AUC, or, given `other` (scored on the SAME
    records in the same order), of the paired difference AUC(res) - AUC(other): each resample draws record
    indices once and recomputes both AUCs on them, so shared record difficulty cancels."""
    if not res.pos or (other is not None and len(other.pos) != len(res.pos)):
        raise ValueError("auc_interval needs per-record scores of the same records (AUCResult.pos/neg)")
    rng = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(resamples):
        idx = torch.randint(0, len(res.pos), (len(res.pos),), generator=rng).tolist()
        a = auc([res.pos[i] for i in idx], [res.neg[i] for i in idx])
        b = auc([other.pos[i] for i in idx], [other.neg[i] for i in idx]) if other is not None else 0.0
        values.append(a - b)
    lo, hi = torch.tensor(values, dtype=torch.float64).quantile(
        torch.tensor([0.025, 0.975], dtype=torch.float64)
    )
    return [float(lo), float(hi)]


@torch.no_grad()
def evaluate_auc(
    model: nn.Module, tokenizer, records, max_length: int, score: str = "mean_prob"
) -> AUCResult:
    """DMPO eval (paper eq. 4): score both orders of each record by length-normalised likelihood.

    `score`: "mean_prob" (eq. 4: average token probability) or "mean_logp" (average token log-prob).
    Both answers share the prompt, so it is encoded once (`score_candidates`).
    """
    from fusionrec.trainer.llm.scoring import score_candidates
    from fusionrec.trainer.recipes.dmpo.data import TruncationStats, answer, encode_record

    if score not in ("mean_prob", "mean_logp"):
        raise ValueError(f"score={score!r}: use 'mean_prob' (paper eq. 4) or 'mean_logp'")
    stats = TruncationStats()
    pos, neg = [], []
    for rec in records:
        # ML-1M's eval file gives only the preferred order; the dispreferred one is its reverse.
        rejected = rec.rejected if rec.rejected is not None else answer(rec.negative, rec.positive)
        good = encode_record(tokenizer, rec, rec.chosen, max_length, stats)
        bad = encode_record(tokenizer, rec, rejected, max_length, stats)
        assert good.prompt_ids == bad.prompt_ids, "both answers must be scored under the same prompt"
        lp = score_candidates(
            model, good.prompt_ids, [good.answer_ids, bad.answer_ids], tokenizer.pad_token_id
        )
        vals = (lp.mean_prob if score == "mean_prob" else lp.mean).tolist()
        pos.append(vals[0])
        neg.append(vals[1])
    pairwise = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in zip(pos, neg, strict=True)) / len(pos)
    # Each record's prompt is encoded for both answers: count truncation per record, not per encoding.
    return AUCResult(auc(pos, neg), pairwise, len(pos), stats.truncated // 2, pos, neg)
