"""Diverse beam search (Vijayakumar et al., 2016), batched over many items, for encoder-decoder models.

transformers 5 removed group/diverse beam search (ENVIRONMENT.md), and IDGenRec's Algorithm 1 calls it for
every item, so this module owns it. The beams of one item are split into G groups of B beams. At every step
the groups are advanced in order; group g's log-probabilities are lowered by λ times the number of times each
token was chosen *at this step* by the groups before it (Hamming diversity). Inside a group this is exactly
transformers' (vectorised) beam search: top-2B continuations, finished hypotheses scored by
sum-logprob / length**length_penalty, and its early-stopping heuristic (`early_stopping=False`). With G = 1
(or λ = 0) the result equals `model.generate(num_beams=B)` — the correctness anchor of the tests.

Shapes: N items (the batch), G groups, B beams per group, V vocabulary, T = max_new_tokens. One decoder
forward per step serves all N·G·B rows through the KV cache; the only Python loop inside a step is over the
G groups, which is inherent to DBS (group g depends on the choices of groups < g). Items whose groups have
all stopped improving are dropped from the batch (their result can no longer change), so a batch costs
what its live items cost.

Stable penalty range. Algorithm 1 re-runs an item at λ = 1, 2, …, 10 until one of its candidates is unused;
a run at λ often proves that every λ' in an interval around λ gives the same hypotheses. With one beam per
group every decision of the search (which candidate leads a group, which finished hypothesis stays, whether
a group stays open) compares two scores that are linear in λ along the fixed path (the penalty counts do not
change while the decisions do not), so each decision holds on an interval of λ, and the intersection over all
decisions holds them all: `BeamOutput.lambda_range`. Comparisons closer than a float margin shrink the range
to λ itself, so float rounding can never make a reused result differ from a computed one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from fusionrec.trainer.idgen.config import DiverseBeamConfig
from fusionrec.trainer.idgen.one_beam import NEG, Ranges, advance_one_beam
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput


@dataclass
class BeamOutput:
    """Per item, G·B finished hypotheses sorted by score (best first; ties keep group order).

    `sequences` (N, G·B, T) holds the generated tokens without the decoder start token, EOS included when
    generated, padded with the pad id; `scores` (N, G·B) are length-normalised like `sequences_scores`.
    """

    sequences: torch.Tensor
    scores: torch.Tensor
    # (N, 2): an open interval (lo, hi) of diversity penalties that give the same hypotheses (as a set per
    # item; their order may differ); (λ, λ) when nothing is proven (B > 1, one group, or a near-tie).
    lambda_range: torch.Tensor | None = None


@dataclass
class _State:
    """Search state of the live items, all shaped (n, G, B, ...)."""

    run_seq: torch.Tensor  # running hypotheses' tokens
    run_score: torch.Tensor  # their summed log-probs (diversity penalties included, as in DBS)
    fin_seq: torch.Tensor  # best finished hypotheses
    fin_score: torch.Tensor  # their length-normalised scores (NEG = empty slot)
    fin_done: torch.Tensor  # bool: slot holds a real finished hypothesis
    open: torch.Tensor  # (n, G) bool: the group can still improve (transformers' early-stop heuristic)
    item: torch.Tensor  # (n,) original item index of each live row
    run_slope: torch.Tensor  # d run_score / dλ along the chosen path (for the stable penalty range)
    fin_slope: torch.Tensor  # d fin_score / dλ

    def select(self, keep: torch.Tensor) -> _State:
        return _State(*(t[keep] for t in (self.run_seq, self.run_score, self.fin_seq, self.fin_score,
                                           self.fin_done, self.open, self.item, self.run_slope,
                                           self.fin_slope)))  # fmt: skip


def _init_state(n: int, g: int, b: int, t: int, pad: int, device: torch.device) -> _State:
    run_score = torch.zeros(n, g, b, device=device)
    run_score[:, :, 1:] = NEG  # only beam 0 of a group is live at step 0, as in transformers
    return _State(
        run_seq=torch.full((n, g, b, t), pad, dtype=torch.long, device=device),
        run_score=run_score,
        fin_seq=torch.full((n, g, b, t), pad, dtype=torch.long, device=device),
        fin_score=torch.full((n, g, b), NEG, device=device),
        fin_done=torch.zeros(n, g, b, dtype=torch.bool, device=device),
        open=torch.ones(n, g, dtype=torch.bool, device=device),
        item=torch.arange(n, device=device),
        run_slope=torch.zeros(n, g, b, device=device),
        fin_slope=torch.zeros(n, g, b, device=device),
    )


def _group_step(
    st: _State,
    cand_lp: torch.Tensor,
    cand_tok: torch.Tensor,
    penalty: tuple[torch.Tensor, torch.Tensor] | None,
    g: int,
    step: int,
    cfg: DiverseBeamConfig,
    eos: int,
) -> torch.Tensor:
    """Advance group `g` by one token (transformers' beam step); returns the parent beam of each new beam.

    `cand_lp`/`cand_tok` (n, B, K): each beam's K best next tokens — enough to hold the group's top 2B after
    the penalty (see `_advance`). `penalty` = (tokens (n, m), weights (n, m)) chosen by earlier groups: a
    token is lowered by λ·weight per choice (weight 1 for a group that was open, else 0), so a token chosen
    twice is penalised twice. Updates `st` in place for this group. (B = 1 takes `one_beam.advance_one_beam`,
    the same arithmetic for all groups at once, plus the λ slopes of the stable range, which only it keeps.)
    """
    n, b, k = cand_lp.shape
    t_max = st.run_seq.shape[-1]
    if penalty is not None:
        tokens, weight = penalty
        hits_prev = cand_tok[..., None] == tokens[:, None, None, :]  # (n, B, K, m)
        cand_lp = cand_lp - cfg.diversity_penalty * (hits_prev * weight[:, None, None, :]).sum(-1)
    scores = (cand_lp + st.run_score[:, g, :, None]).reshape(n, b * k)
    top_score, top_idx = torch.topk(scores, 2 * b)
    parent, token = top_idx // k, torch.gather(cand_tok.reshape(n, b * k), 1, top_idx)
    cand = torch.take_along_dim(st.run_seq[:, g], parent[..., None], dim=1)
    cand[:, :, step] = token
    hits = (token == eos) | (step + 1 >= t_max)  # EOS or max length: the hypothesis is finished
    # Running beams for the next step: the best B candidates that did not finish.
    run_cand = top_score + hits.float() * NEG
    nxt = torch.topk(run_cand, b).indices
    st.run_seq[:, g] = torch.take_along_dim(cand, nxt[..., None], dim=1)
    st.run_score[:, g] = torch.take_along_dim(run_cand, nxt, dim=1)
    # Finished: only the top-B candidates may enter, only while the group can still improve.
    in_top = torch.arange(2 * b, device=top_score.device) < b
    ok = hits & in_top & st.open[:, g, None]
    scale = float(step + 1) ** cfg.length_penalty
    norm = torch.where(ok, top_score / scale, torch.full_like(top_score, 2 * NEG))
    merged_score = torch.cat([st.fin_score[:, g], norm], dim=1)
    best = torch.topk(merged_score, b).indices
    st.fin_score[:, g] = torch.take_along_dim(merged_score, best, dim=1)
    st.fin_seq[:, g] = torch.take_along_dim(torch.cat([st.fin_seq[:, g], cand], 1), best[..., None], dim=1)
    st.fin_done[:, g] = torch.take_along_dim(torch.cat([st.fin_done[:, g], ok], 1), best, dim=1)
    # Early-stop heuristic (early_stopping=False): can the best running beam still beat the worst finished?
    best_possible = st.run_score[:, g, :1] / scale
    worst = torch.where(st.fin_done[:, g], st.fin_score[:, g].min(dim=1, keepdim=True).values, NEG)
    st.open[:, g] &= (best_possible > worst).any(dim=1) & ~hits.all(dim=1)
    return torch.take_along_dim(parent, nxt, dim=1)


def _num_candidates(cfg: DiverseBeamConfig, vocab: int) -> int:
    b, groups = cfg.beams_per_group, cfg.num_groups
    return min(vocab, 2 * b + ((groups - 1) * b if cfg.diversity_penalty > 0 else 0))


def _advance(
    st: _State,
    cand_lp: torch.Tensor,
    cand_tok: torch.Tensor,
    step: int,
    cfg: DiverseBeamConfig,
    eos: int,
    ranges: Ranges | None = None,
) -> torch.Tensor:
    """One step for all groups; returns (n, G, B) parent beam indices. cand_*: (n, G, B, K).

    The vocabulary is touched once per step: each beam keeps its K = 2B + (G-1)·B best tokens. That is
    exact — at most (G-1)·B tokens are penalised, so at least 2B unpenalised tokens of the K outrank every
    token outside them, and a group's top 2B over B·V always lies inside the B·K candidates. The loop over
    groups then works on (n, B, K) tensors instead of (n, B, V).
    """
    n, groups, b, _ = cand_lp.shape
    if b == 1:
        return advance_one_beam(st, cand_lp, cand_tok, step, cfg, eos, ranges)
    assert ranges is None, "the stable penalty range is defined for one beam per group"
    lam = cfg.diversity_penalty
    parents = torch.empty(n, groups, b, dtype=torch.long, device=cand_lp.device)
    was_open = st.open.clone()  # status at the start of the step
    for g in range(groups):
        penalty = None
        if lam > 0 and g > 0:
            # Tokens chosen at this step by groups < g; a group that had already stopped takes no part.
            tokens = st.run_seq[:, :g, :, step].reshape(n, g * b)
            weight = was_open[:, :g, None].float().expand(n, g, b).reshape(n, g * b)
            penalty = (tokens, weight)
        parents[:, g] = _group_step(st, cand_lp[:, g], cand_tok[:, g], penalty, g, step, cfg, eos)
    return parents


# Rows per LM-head chunk: the head's (rows, V) logits, their log-softmax and top-k run chunk by chunk so a
# chunk's 32k-wide rows stay in cache between the three passes. Measured on this 2-core CPU (640 rows, V 32,100,
# d 64): 56 ms chunked vs 86 ms in one piece, bitwise the same values (each row's dot products do not depend
# on the other rows).
HEAD_CHUNK_ROWS = 32


@contextmanager
def _hidden_states_out(model: PreTrainedModel) -> Iterator[nn.Module | None]:
    """For T5, within the block the forward returns the LM head's *input* as `logits`; yields the head.

    T5's forward ends in `lm_head(scaled decoder output)`, so swapping the head for an identity keeps the
    scaling in the forward and lets `_candidates` apply the head in row chunks. Other models (BART adds a
    bias after its head) keep their forward and yield None: `_candidates` then gets full logits."""
    head = model.get_output_embeddings()
    if model.config.model_type != "t5" or not isinstance(head, nn.Linear):
        yield None
        return
    model.set_output_embeddings(nn.Identity())
    try:
        yield head
    finally:
        model.set_output_embeddings(head)


def _decode(
    model: PreTrainedModel, tokens: torch.Tensor, enc: torch.Tensor, mask: torch.Tensor, cache
) -> torch.Tensor:
    """One decoder step for every row: its logits (rows, V), or under `_hidden_states_out` the head's input."""
    out = model(
        encoder_outputs=BaseModelOutput(last_hidden_state=enc),
        attention_mask=mask,
        decoder_input_ids=tokens[:, None],
        past_key_values=cache,
        use_cache=True,
        return_dict=True,
    )
    return out.logits[:, -1, :]


def _candidates(
    hidden: torch.Tensor, head: nn.Module | None, k: int, eos: int, bar_eos: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's k best tokens with their log-probabilities (exactly transformers' log_softmax values).

    Measured on CPU, log_softmax over the vocabulary then a gather of k values costs about half of
    torch.logsumexp (its kernel is vectorised; logsumexp's is not), so the full log-softmax is written.
    """
    values, indices = [], []
    for rows in hidden.split(HEAD_CHUNK_ROWS):
        logits = rows if head is None else head(rows)
        logp = torch.log_softmax(logits.float(), dim=-1)
        if bar_eos:
            # EOS barred until the minimum length, *after* normalising (as transformers' min-length processor
            # does on log-probs: the other tokens are not renormalised).
            logp[:, eos] = float("-inf")
        top = torch.topk(logp, k, dim=-1)
        values.append(top.values)
        indices.append(top.indices)
    return torch.cat(values), torch.cat(indices)


@torch.no_grad()
def diverse_beam_search(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cfg: DiverseBeamConfig,
    track_range: bool = True,
) -> BeamOutput:
    """Run DBS on a batch of N encoder inputs; returns G·B hypotheses per item (see `BeamOutput`).

    `track_range=False` skips the stable-penalty-range bookkeeping (the range is then (λ, λ))."""
    with _hidden_states_out(model) as head:
        return _search(model, head, input_ids, attention_mask, cfg, track_range)


def _search(
    model: PreTrainedModel,
    head: nn.Module | None,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cfg: DiverseBeamConfig,
    track_range: bool,
) -> BeamOutput:
    conf = model.config
    eos, pad, start = conf.eos_token_id, conf.pad_token_id, conf.decoder_start_token_id
    if eos is None or pad is None or start is None:
        raise ValueError(f"model config needs eos/pad/decoder_start ids, got {eos}, {pad}, {start}")
    n, groups, b, t_max = input_ids.shape[0], cfg.num_groups, cfg.beams_per_group, cfg.max_new_tokens
    rows_per_item = groups * b
    device = input_ids.device
    enc = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    # Step 0 is identical for every beam of an item: run it once per item, then fan the cache out.
    hidden = _decode(model, torch.full((n,), start, device=device), enc, attention_mask, cache)
    cache.batch_repeat_interleave(rows_per_item)
    enc = enc.repeat_interleave(rows_per_item, dim=0)
    mask = attention_mask.repeat_interleave(rows_per_item, dim=0)
    k = _num_candidates(cfg, hidden.shape[-1] if head is None else head.out_features)
    cand = _candidates(hidden, head, k, eos, cfg.min_new_tokens > 0)
    cand_lp, cand_tok = (x[:, None, None, :].expand(n, groups, b, k) for x in cand)
    st = _init_state(n, groups, b, t_max, pad, device)
    out_seq, out_score = st.fin_seq.clone(), st.fin_score.clone()
    lam = cfg.diversity_penalty
    ranges = Ranges(n, lam, device) if track_range and b == 1 and groups > 1 and lam > 0 else None
    for step in range(t_max):
        if step > 0:
            hidden = _decode(model, st.run_seq[..., step - 1].reshape(-1), enc, mask, cache)
            cand = _candidates(hidden, head, k, eos, step < cfg.min_new_tokens)
            cand_lp, cand_tok = (x.view(-1, groups, b, k) for x in cand)
        parents = _advance(st, cand_lp, cand_tok, step, cfg, eos, ranges)
        if ranges is not None:
            ranges.apply(st.item)
        keep = st.open.any(dim=1)
        if step + 1 == t_max or not bool(keep.any()):
            break
        old_pos = torch.arange(keep.shape[0], device=device)
        if not bool(keep.all()):
            # Retire items that can no longer change; their finished beams are final.
            done = ~keep
            out_seq[st.item[done]], out_score[st.item[done]] = st.fin_seq[done], st.fin_score[done]
            st, parents, old_pos = st.select(keep), parents[keep], old_pos[keep]
            row_keep = (
                old_pos[:, None] * rows_per_item + torch.arange(rows_per_item, device=device)
            ).reshape(-1)
            cache.cross_attention_cache.batch_select_indices(row_keep)
            enc, mask = enc[row_keep], mask[row_keep]
        # Self-attention rows follow their parent beams (and drop retired items) in one index_select;
        # cross-attention keys/values are per item, identical across its beams: never reordered.
        base = old_pos[:, None, None] * rows_per_item + torch.arange(groups, device=device)[None, :, None] * b
        cache.self_attention_cache.reorder_cache((base + parents).reshape(-1))
    out_seq[st.item], out_score[st.item] = st.fin_seq, st.fin_score
    span = ranges.as_tensor() if ranges is not None else torch.full((n, 2), lam, dtype=torch.float64)
    return _sorted_output(out_seq.reshape(n, rows_per_item, t_max), out_score.reshape(n, rows_per_item), span)


def _sorted_output(seq: torch.Tensor, score: torch.Tensor, span: torch.Tensor) -> BeamOutput:
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    return BeamOutput(
        sequences=torch.take_along_dim(seq, order[..., None], dim=1),
        scores=torch.take_along_dim(score, order, dim=1),
        lambda_range=span.cpu(),
    )
