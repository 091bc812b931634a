"""Diverse beam search with one beam per group (IDGenRec's setting): the step, and its stable penalty range.

With B = 1 the only thing a group passes to the groups after it within a step is the token its running beam
chose. So the loop over groups computes just that (penalised scores, top 2, the running token); everything
else — finished hypotheses, the early-stop test, slopes, the range bookkeeping — runs once for all groups.
The arithmetic is the general step's (`diverse_beam._group_step`), op for op, so the results are identical.

Stable penalty range. Every decision of the search (which candidate leads a group, which finished hypothesis
stays, whether a group stays open) compares two scores that are linear in λ along the fixed path (the penalty
counts do not change while the decisions do not), so each decision holds on an interval of λ, and the
intersection holds them all (`BeamOutput.lambda_range`). Comparisons closer than a float margin shrink the
range to λ itself, so float rounding can never make a reused result differ from a computed one.
"""

from __future__ import annotations

from typing import Any

import torch

NEG = -1.0e9  # transformers' "impossible" score; kept identical so that masked beams order the same way
# Float margins of the stable range: candidates of one group share its running score, so their order is fixed
# while their gap exceeds the rounding of that sum (~3e-5 at |score| 300); finished/open decisions compare
# sums accumulated over up to ~30 steps, which round more.
TOKEN_MARGIN = 2e-4
SCORE_MARGIN = 1e-2


class Ranges:
    """Per original item, the interval (lo, hi) of λ on which every decision so far is unchanged.

    Decisions are collected with `keep_sign` and applied once per step by `apply`."""

    def __init__(self, n: int, lam: float, device: torch.device):
        self.lam = lam
        self.lo = torch.full((n,), float("-inf"), dtype=torch.float64, device=device)
        self.hi = torch.full((n,), float("inf"), dtype=torch.float64, device=device)
        self.pending: list[tuple[torch.Tensor, ...]] = []

    def keep_sign(self, diff: torch.Tensor, slope: torch.Tensor, mask: torch.Tensor, margin: float) -> None:
        """The live rows made decisions that hold while `diff + slope·(λ' - λ)` keeps its sign with
        |.| > margin. diff, slope, mask: (n, M); masked-out entries are not decisions."""
        self.pending.append((diff, slope, mask, torch.full_like(diff, margin)))

    def apply(self, item: torch.Tensor) -> None:
        """Intersect the ranges of the live rows (original indices `item`) with this step's decisions."""
        if not self.pending:
            return
        parts = zip(*self.pending, strict=True)
        diff, slope, mask, margin = (torch.cat(p, dim=1).double() for p in parts)
        self.pending.clear()
        mask = mask.bool()
        size, dslope = diff.abs(), slope * torch.sign(diff)  # the gap and how fast it closes (< 0) or opens
        near = (mask & (size <= margin)).any(dim=1)
        room = (size - margin) / dslope.abs().clamp_min(1e-30)
        inf = torch.full_like(room, float("inf"))
        up = torch.where(mask & (dslope < 0), room, inf).min(dim=1).values  # λ' may grow by this much
        down = torch.where(mask & (dslope > 0), room, inf).min(dim=1).values  # ... or shrink by this much
        self.lo[item] = torch.maximum(self.lo[item], torch.where(near, self.lam, self.lam - down))
        self.hi[item] = torch.minimum(self.hi[item], torch.where(near, self.lam, self.lam + up))

    def as_tensor(self) -> torch.Tensor:
        return torch.stack([self.lo.clamp_min(0.0), self.hi], dim=1)


def _choose(st: Any, lp: torch.Tensor, tok: torch.Tensor, lam: float, was_open: torch.Tensor, eos: int,
            final: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """The sequential part: per group, the penalised scores (n, G, K), their slopes and the top-2 indices."""
    n, groups, k = lp.shape
    weight = was_open.float()
    chosen = torch.empty(n, groups, dtype=torch.long, device=lp.device)
    slopes = torch.zeros_like(lp)
    scores = torch.empty_like(lp)
    top_idx = torch.empty(n, groups, 2, dtype=torch.long, device=lp.device)
    for g in range(groups):
        row = lp[:, g]
        if g > 0 and lam > 0:  # a token chosen by an earlier (open) group is lowered by λ per choice
            slopes[:, g] = -((tok[:, g, :, None] == chosen[:, None, :g]) * weight[:, None, :g]).sum(-1)
            row = row + lam * slopes[:, g]
        scores[:, g] = row + st.run_score[:, g, 0, None]
        top_idx[:, g] = torch.topk(scores[:, g], 2).indices
        first = torch.gather(tok[:, g], 1, top_idx[:, g])
        # The running beam: the better of the two unless it finished (EOS before the last step).
        runner_up = (first[:, 0] == eos) & (not final)
        chosen[:, g] = torch.where(runner_up, first[:, 1], first[:, 0])
    return scores, slopes + st.run_slope[:, :, 0, None], top_idx


def advance_one_beam(st: Any, cand_lp: torch.Tensor, cand_tok: torch.Tensor, step: int, cfg: Any, eos: int,
                     ranges: Ranges | None) -> torch.Tensor:  # fmt: skip
    """One step for all groups (B = 1); updates `st` in place and returns the parent beams (all 0)."""
    lp, tok = cand_lp[:, :, 0], cand_tok[:, :, 0]  # (n, G, K)
    t_max = st.run_seq.shape[-1]
    final = step + 1 >= t_max
    was_open = st.open.clone()
    scores, slopes, top_idx = _choose(st, lp, tok, cfg.diversity_penalty, was_open, eos, final)
    top_score, top_slope = torch.gather(scores, 2, top_idx), torch.gather(slopes, 2, top_idx)
    token = torch.gather(tok, 2, top_idx)  # (n, G, 2)
    cand = st.run_seq[:, :, :1].expand(-1, -1, 2, -1).clone()
    cand[..., step] = token
    hits = (token == eos) | final
    if ranges is not None:
        _rank_ranges(ranges, scores, slopes, top_idx, hits[..., 0] & (not final), was_open)
    run_cand = top_score + hits.float() * NEG
    nxt = torch.topk(run_cand, 1).indices
    st.run_seq[:, :, :1] = torch.take_along_dim(cand, nxt[..., None], dim=2)
    st.run_score[:, :, :1] = torch.take_along_dim(run_cand, nxt, dim=2)
    st.run_slope[:, :, :1] = torch.take_along_dim(top_slope, nxt, dim=2)
    ok = hits & torch.tensor([True, False], device=hits.device) & st.open[..., None]
    scale = float(step + 1) ** cfg.length_penalty
    norm = torch.where(ok, top_score / scale, torch.full_like(top_score, 2 * NEG))
    norm_slope = torch.where(ok, top_slope / scale, torch.zeros_like(top_slope))
    if ranges is not None:  # does the new hypothesis replace the one kept so far?
        flat = lambda t: t.reshape(t.shape[0], -1)  # noqa: E731
        ranges.keep_sign(flat(norm[..., :1] - st.fin_score), flat(norm_slope[..., :1] - st.fin_slope),
                         flat(st.fin_done & ok[..., :1] & was_open[..., None]), SCORE_MARGIN)  # fmt: skip
    merged = torch.cat([st.fin_score, norm], dim=2)
    best = torch.topk(merged, 1).indices
    st.fin_score = torch.take_along_dim(merged, best, dim=2)
    st.fin_slope = torch.take_along_dim(torch.cat([st.fin_slope, norm_slope], 2), best, dim=2)
    st.fin_seq = torch.take_along_dim(torch.cat([st.fin_seq, cand], 2), best[..., None], dim=2)
    st.fin_done = torch.take_along_dim(torch.cat([st.fin_done, ok], 2), best, dim=2)
    # Early-stop heuristic (early_stopping=False): can the best running beam still beat the worst finished?
    best_possible = st.run_score[..., 0] / scale
    worst = torch.where(st.fin_done[..., 0], st.fin_score[..., 0], NEG)
    if ranges is not None:
        live = was_open & st.fin_done[..., 0] & ~hits.all(dim=2)
        ranges.keep_sign(best_possible - worst, st.run_slope[..., 0] / scale - st.fin_slope[..., 0], live,
                         SCORE_MARGIN)  # fmt: skip
    st.open &= (best_possible > worst) & ~hits.all(dim=2)
    return torch.zeros_like(nxt)


def _rank_ranges(ranges: Ranges, scores: torch.Tensor, slopes: torch.Tensor, top_idx: torch.Tensor,
                 need_second: torch.Tensor, was_open: torch.Tensor) -> None:  # fmt: skip
    """The leading candidate must stay ahead of every other; when it finished early (EOS), the runner-up
    (the next running beam) must stay ahead of the rest too. Closed groups decide nothing."""
    n, groups, k = scores.shape
    cols = torch.arange(k, device=scores.device)
    for rank in (0, 1):
        lead = top_idx[..., rank : rank + 1]
        others = (cols != lead) & (cols != top_idx[..., 0:1])  # rank 1 need not beat rank 0
        rows = was_open if rank == 0 else was_open & need_second
        diff = torch.gather(scores, 2, lead) - scores
        slope = torch.gather(slopes, 2, lead) - slopes
        ranges.keep_sign(diff.reshape(n, -1), slope.reshape(n, -1), (others & rows[..., None]).reshape(n, -1),
                         TOKEN_MARGIN)  # fmt: skip
