"""Vectorised, trie-constrained beam search for encoder-decoder recommenders (T5, BART).

The search is HF ``generate``'s beam search (transformers 5, ``_beam_search``) step for step: same
candidate pool (2 x num_beams per query), same finished-hypothesis bookkeeping, same length normalisation
(``sum log p / generated_len ** length_penalty``, eos counted, decoder_start not) and the same stopping
heuristic for ``early_stopping`` in {False (HF default), True, "never"}. So with ``num_beams=k``
and ``num_return_sequences=k`` HF returns the same items with the same ``sequences_scores``.

What differs is how the constraint is applied. HF calls ``prefix_allowed_tokens_fn`` once per beam per step
in Python and then ranks all ``num_beams x vocab`` entries of a masked score matrix. Here every beam carries
its trie node; a step expands all (batch x beams) nodes to their children with one CSR gather
(:meth:`CompiledTrie.expand`), scores exactly those candidates, and ranks per query only the candidates
(a few hundred instead of 20 x 32k). The log-softmax is still over the full vocabulary, so scores are HF's.
With ``renormalize`` (a model trained with the trie softmax) each step's log-prob is instead taken over the
node's children only, which is HF's search with ``renormalize_logits=True``; the default length penalty is
then 0, so items rank by log P(item). Only the trie's emitted tokens' logits matter then, and a T5 head
computes only those (``models.heads.column_head``): the same scores up to float rounding.

Extras for recommendation: the result is the top-k distinct *items* (leaf -> item index), and a query's
history can be excluded: every trie node whose items are all excluded for that query is pruned (so no beam is
wasted on a dead end), which is exactly a search over the trie without those items.

Scores are the model's own log-probabilities. HF's BART default ``forced_eos_token_id`` rewrites the
last step's eos log-prob to 0 at ``max_length`` (favouring the longest IDs); compare with
``forced_eos_token_id=None``. Other speed-ups that keep the result: the first step runs one decoder row per
query (all beams are the same start token), and only the self-attention cache is reordered.

Documented edge behaviour: when fewer than ``top_k`` valid items are found (``top_k`` above the number of
non-excluded items, or beams that ran out), the remaining slots hold item ``-1`` and score ``-inf``.
Hypotheses that only exist because of HF's -1e9 initialisation of the duplicate start beams are never items.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from transformers.cache_utils import EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from ..models.heads import column_head
from .trie import CompiledTrie

_NEG = -1.0e9  # HF's "impossible" offset; anything below _JUNK did not come from a real hypothesis
_JUNK = -1.0e8


@dataclass
class BeamSearchConfig:
    """Decoding settings (HF semantics)."""

    num_beams: int = 20
    top_k: int = 20
    # None: 1.0 (HF's default), or 0.0 when renormalising: the summed step log-probs are then log P(item)
    # of a distribution over the catalogue (dividing by the length would favour long IDs).
    length_penalty: float | None = None
    early_stopping: bool | str = False
    max_new_tokens: int | None = None  # None: the trie's depth (every item reachable)
    # Score each step by the softmax over the node's trie children only (a model trained with the trie
    # softmax, see CompiledTrie.log_softmax). None: the model config's ``trie_softmax`` (default False).
    renormalize: bool | None = None

    def __post_init__(self) -> None:
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if not 1 <= self.top_k <= self.num_beams:
            raise ValueError(f"top_k must be in [1, num_beams={self.num_beams}], got {self.top_k}")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class BeamResult:
    items: torch.Tensor  # [B, k] int64 item index (-1: no valid item for this slot)
    scores: torch.Tensor  # [B, k] float32 log-probability / len ** length_penalty (-inf for empty slots)
    sequences: torch.Tensor  # [B, k, L] int64 decoder_start + tokens + eos, padded with pad_token_id
    steps: int  # decoding steps run


@dataclass
class StepTimings:
    """Optional wall-clock breakdown filled by the search (for bench/decode.py)."""

    forward: float = 0.0
    constraint: float = 0.0  # trie expansion, exclusion and candidate packing
    select: float = 0.0  # top-k, finished-beam bookkeeping, cache reorder
    steps: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.forward + self.constraint + self.select


@dataclass
class _Candidates:
    scores: torch.Tensor  # [B, 2K] accumulated log-prob
    beam: torch.Tensor  # [B, 2K] source beam within the query
    token: torch.Tensor  # [B, 2K]
    node: torch.Tensor  # [B, 2K] trie node after the token (dead when unconstrained)


def constrained_beam_search(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    trie: CompiledTrie | None,
    num_beams: int,
    top_k: int,
    exclude_items: torch.Tensor | list[list[int]] | None = None,
    length_penalty: float | None = None,
    max_new_tokens: int | None = None,
    early_stopping: bool | str = False,
    timings: StepTimings | None = None,
    renormalize: bool | None = None,
) -> BeamResult:
    """Top-``top_k`` distinct items per query by beam search constrained to ``trie``.

    ``exclude_items`` ([B, H] item indices, -1 padded, or a list of lists) removes each query's own items
    (e.g. its history). ``trie=None`` runs the same search unconstrained (``max_new_tokens`` required;
    ``items`` are then -1): the baseline that measures what the constraint costs.
    """
    cfg = BeamSearchConfig(num_beams, top_k, length_penalty, early_stopping, max_new_tokens, renormalize)
    return beam_search(model, input_ids, attention_mask, cfg, trie, exclude_items, timings)


@torch.inference_mode()
def beam_search(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cfg: BeamSearchConfig,
    trie: CompiledTrie | None = None,
    exclude_items: torch.Tensor | list[list[int]] | None = None,
    timings: StepTimings | None = None,
) -> BeamResult:
    """See :func:`constrained_beam_search`; this form takes a :class:`BeamSearchConfig`."""
    start, eos, pad, max_new = _special_tokens(model, trie, cfg)
    if trie is not None and trie.device != input_ids.device:
        raise ValueError(
            f"trie is on {trie.device} but input_ids on {input_ids.device}: call trie.to(device)"
        )
    batch, k = input_ids.shape[0], cfg.num_beams
    excluded = _excluded_keys(trie, exclude_items, batch, input_ids.device)
    cfg = _resolve_scoring(cfg, model, trie)
    was_training = model.training
    model.eval()
    # Renormalised scoring reads only the trie's emitted tokens' logits: a T5 head computes only those.
    columns = trie.emitted_tokens if cfg.renormalize else None
    try:
        state = _State.initial(batch, k, 1 + max_new, start, pad, trie, input_ids.device)
        encoded = _encode(model, input_ids, attention_mask)
        cache = None
        while True:
            t0 = time.perf_counter()
            with column_head(model, columns) as restricted:
                log_probs, cache = _forward(model, encoded, state, cache, k)
            t1 = time.perf_counter()
            if trie is None:
                cand = _dense_candidates(log_probs, state.running_scores)
            else:
                cand = _trie_candidates(log_probs, state.running_scores, state.nodes, trie, excluded,
                                        bool(cfg.renormalize), restricted)  # fmt: skip
            t2 = time.perf_counter()
            first = state.cur_len == 1
            done = state.advance(cand, cfg, eos, trie)
            _reorder_cache(cache, state.running_beam, k, first)
            if timings is not None:
                timings.forward += t1 - t0
                timings.constraint += t2 - t1
                timings.select += time.perf_counter() - t2
                timings.steps += 1
            if done:
                break
        return state.result(cfg.top_k, constrained=trie is not None)
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------- setup helpers
def _special_tokens(
    model: nn.Module, trie: CompiledTrie | None, cfg: BeamSearchConfig
) -> tuple[int, int, int, int]:
    conf = model.config
    if not getattr(conf, "is_encoder_decoder", False):
        raise ValueError(f"{type(model).__name__} is not an encoder-decoder model")
    start = conf.decoder_start_token_id
    eos, pad = conf.eos_token_id, conf.pad_token_id
    if trie is None:
        if cfg.max_new_tokens is None:
            raise ValueError("unconstrained beam search needs max_new_tokens")
        return start, eos, pad, cfg.max_new_tokens
    if (trie.decoder_start_token_id, trie.eos_token_id) != (start, eos):
        raise ValueError(
            f"trie uses decoder_start={trie.decoder_start_token_id}, eos={trie.eos_token_id} but the model's "
            f"config has decoder_start_token_id={start}, eos_token_id={eos}"
        )
    if cfg.max_new_tokens is not None and cfg.max_new_tokens < trie.max_depth:
        raise ValueError(
            f"max_new_tokens={cfg.max_new_tokens} < trie depth {trie.max_depth}: the longest items could never "
            "be generated; leave it None"
        )
    return start, eos, pad, cfg.max_new_tokens or trie.max_depth


def _resolve_scoring(cfg: BeamSearchConfig, model: nn.Module, trie: CompiledTrie | None) -> BeamSearchConfig:
    """Fill ``renormalize`` / ``length_penalty`` left None from the model config's ``trie_softmax``."""
    trie_softmax = bool(getattr(model.config, "trie_softmax", False))
    renormalize = trie_softmax if cfg.renormalize is None else cfg.renormalize
    if renormalize and trie is None:
        raise ValueError("renormalize (trie softmax) needs a trie")
    length_penalty = (0.0 if renormalize else 1.0) if cfg.length_penalty is None else cfg.length_penalty
    return replace(cfg, renormalize=renormalize, length_penalty=length_penalty)


def _encode(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> _Encoded:
    """Run the encoder once per query (HF does the same, then repeats it per beam)."""
    enc = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
    return _Encoded(enc.last_hidden_state, attention_mask)


@dataclass
class _Encoded:
    hidden: torch.Tensor  # [B, S, D]
    mask: torch.Tensor  # [B, S]
    per_beam: tuple[BaseModelOutput, torch.Tensor] | None = None

    def expanded(self, k: int) -> tuple[BaseModelOutput, torch.Tensor]:
        if self.per_beam is None:
            hidden = self.hidden.repeat_interleave(k, dim=0)
            self.per_beam = BaseModelOutput(last_hidden_state=hidden), self.mask.repeat_interleave(k, dim=0)
        return self.per_beam


def _forward(model: nn.Module, encoded: _Encoded, state: _State, cache, k: int):
    """Full-vocabulary log-probs [B*K, V] of the next token and the updated KV cache.

    At the first step all K beams of a query are the same ``decoder_start`` prefix, so the decoder runs
    on one row per query (K times less work, including the cross-attention key/value projections of the
    whole prompt) and the result is repeated per beam; the cache is expanded in :func:`_reorder_cache`.
    """
    first = state.cur_len == 1
    if first:
        enc_out, mask = BaseModelOutput(last_hidden_state=encoded.hidden), encoded.mask
        tokens = state.sequences[:, 0, :1]
    else:
        (enc_out, mask), tokens = encoded.expanded(k), state.last_tokens()
    out = model(
        encoder_outputs=enc_out,
        attention_mask=mask,
        decoder_input_ids=tokens,
        past_key_values=cache,
        use_cache=True,
        return_dict=True,
    )
    log_probs = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
    if first:
        log_probs = log_probs.repeat_interleave(k, dim=0)
    return log_probs, out.past_key_values


def _excluded_keys(
    trie: CompiledTrie | None,
    exclude: torch.Tensor | list[list[int]] | None,
    batch: int,
    device: torch.device,
) -> torch.Tensor | None:
    """Sorted keys ``query * (num_nodes + 1) + node`` of every trie node with no allowed item left below it."""
    if exclude is None:
        return None
    if trie is None:
        raise ValueError("exclude_items needs a trie")
    items = _as_padded(exclude, batch, device)
    if items.numel() and (items.max() >= trie.num_items or items.min() < -1):
        bad = items[(items >= trie.num_items) | (items < -1)][0].item()
        raise ValueError(
            f"exclude_items holds item index {bad}, valid are -1 (padding) and 0..{trie.num_items - 1}"
        )
    query = torch.arange(batch, device=device)[:, None].expand_as(items)
    keep = items >= 0
    query, items = query[keep], items[keep]
    # One (query, item) once, then every node on the item's path gets one excluded item below it.
    stride = trie.num_nodes + 1
    pair = torch.unique(query * trie.num_items + items)
    query, items = pair // trie.num_items, pair % trie.num_items
    paths = trie.item_nodes[items]  # [P, depth] node ids, -1 padded
    path_keys = (query[:, None] * stride + paths)[paths >= 0]
    keys, excluded_below = torch.unique(path_keys, return_counts=True)
    dead = excluded_below == trie.subtree_items[keys % stride]
    return keys[dead]


def _as_padded(exclude: torch.Tensor | list[list[int]], batch: int, device: torch.device) -> torch.Tensor:
    if isinstance(exclude, torch.Tensor):
        items = exclude.to(device=device, dtype=torch.long)
    else:
        width = max((len(row) for row in exclude), default=0)
        items = torch.full((len(exclude), width), -1, dtype=torch.long)
        for i, row in enumerate(exclude):
            items[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
        items = items.to(device)
    if items.dim() != 2 or items.shape[0] != batch:
        raise ValueError(
            f"exclude_items must have one row per query ({batch}), got shape {tuple(items.shape)}"
        )
    return items


# ---------------------------------------------------------------------- candidate generation
def _dense_candidates(log_probs: torch.Tensor, running_scores: torch.Tensor) -> _Candidates:
    """Unconstrained: HF's top 2K over all num_beams x vocab continuations."""
    batch, k = running_scores.shape
    vocab = log_probs.shape[-1]
    acc = (log_probs.view(batch, k, vocab) + running_scores[:, :, None]).view(batch, k * vocab)
    scores, idx = torch.topk(acc, 2 * k)
    token = idx % vocab
    return _Candidates(scores, idx // vocab, token, torch.full_like(token, -1))


def _trie_candidates(
    log_probs: torch.Tensor,
    running_scores: torch.Tensor,
    nodes: torch.Tensor,
    trie: CompiledTrie,
    excluded: torch.Tensor | None,
    renormalize: bool = False,
    restricted: bool = False,
) -> _Candidates:
    """Top 2K per query among the trie children of all its beams, without a Python loop over beams.

    ``renormalize``: each beam's step log-prob is taken over its node's children only (minus their
    logsumexp), the scoring of a model trained with the trie softmax. ``restricted``: the columns of
    ``log_probs`` are ``trie.emitted_tokens`` (renormalising, their own normaliser cancels)."""
    batch, k = running_scores.shape
    rows, edges = trie.expand(nodes.view(-1))
    tokens, children = trie.child_token[edges], trie.child_node[edges]
    step = log_probs[rows, trie.columns_of(tokens) if restricted else tokens]
    if renormalize:
        lse = _segment_logsumexp(step, rows, log_probs.shape[0])[rows]
        step = torch.where(torch.isfinite(lse), step - lse, step)  # all children -inf: stay -inf, not NaN
    scores = step + running_scores.view(-1)[rows]  # same float op as HF's masked matrix
    query = torch.div(rows, k, rounding_mode="floor")
    if excluded is not None:
        pruned = torch.isin(query * (trie.num_nodes + 1) + children, excluded)
        scores = scores.masked_fill(pruned, float("-inf"))
    # Pack each query's candidates into one row (rows are query-major, so a query's are contiguous).
    per_query = torch.bincount(query, minlength=batch)
    pos = torch.arange(rows.numel(), device=rows.device) - (torch.cumsum(per_query, 0) - per_query)[query]
    width = max(int(per_query.max()) if rows.numel() else 0, 2 * k)
    packed = scores.new_full((batch, width), float("-inf"))
    packed[query, pos] = scores
    src = torch.full((batch, width), rows.numel(), dtype=torch.long, device=rows.device)
    src[query, pos] = torch.arange(rows.numel(), device=rows.device)
    top_scores, sel = torch.topk(packed, 2 * k)
    src = src.gather(1, sel)  # == rows.numel() marks padding: a dead candidate, never an item
    beam = torch.cat([rows % k, rows.new_tensor([0])])[src]
    token = torch.cat([tokens, rows.new_tensor([-1])])[src]
    node = torch.cat([children, rows.new_tensor([trie.dead])])[src]
    return _Candidates(top_scores, beam, token, node)


def _segment_logsumexp(values: torch.Tensor, rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """logsumexp of ``values`` grouped by ``rows`` (a row without values gets -inf)."""
    top = values.new_full((num_rows,), float("-inf")).scatter_reduce(0, rows, values, "amax")
    safe = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = values.new_zeros(num_rows).index_add_(0, rows, (values - safe[rows]).exp())
    return safe + total.log()


def _reorder_cache(cache, running_beam: torch.Tensor, k: int, first: bool) -> None:
    """Select each surviving beam's cache rows.

    After the first step the cache holds one row per query (see :func:`_forward`): every row, self- and
    cross-attention, is repeated to K beams. Later, only the self-attention part is gathered (flat index
    query * K + source beam): cross-attention keys/values are identical for all beams of one query and a
    beam never moves to another query (HF reorders both).
    """
    batch = running_beam.shape[0]
    if first:
        cache.reorder_cache(torch.arange(batch, device=running_beam.device).repeat_interleave(k))
        return
    offsets = torch.arange(batch, device=running_beam.device)[:, None] * k
    idx = (running_beam + offsets).view(-1)
    if isinstance(cache, EncoderDecoderCache):
        cache.self_attention_cache.reorder_cache(idx)
    else:
        cache.reorder_cache(idx)


# ---------------------------------------------------------------------- HF beam bookkeeping
@dataclass
class _State:
    """Running and finished hypotheses, mirroring transformers' ``_beam_search`` tensors."""

    sequences: torch.Tensor  # [B, K, L] running
    running_scores: torch.Tensor  # [B, K]
    running_beam: torch.Tensor  # [B, K] source beam of the last step (cache reorder)
    nodes: torch.Tensor  # [B, K] trie node of each running beam
    fin_sequences: torch.Tensor  # [B, K, L]
    fin_scores: torch.Tensor  # [B, K] length-normalised
    fin_items: torch.Tensor  # [B, K]
    fin_done: torch.Tensor  # [B, K] HF's is_sent_finished
    open: torch.Tensor  # [B, 1] HF's is_early_stop_heuristic_unsatisfied
    cur_len: int
    max_length: int
    pad: int

    @classmethod
    def initial(cls, batch: int, k: int, max_length: int, start: int, pad: int, trie, device) -> _State:
        seqs = torch.full((batch, k, max_length), pad, dtype=torch.long, device=device)
        seqs[:, :, 0] = start
        scores = torch.zeros(batch, k, device=device)
        scores[:, 1:] = _NEG  # only beam 0 expands at step 1 (HF)
        nodes = torch.full((batch, k), trie.root if trie is not None else -1, dtype=torch.long, device=device)
        return cls(
            sequences=seqs,
            running_scores=scores,
            running_beam=torch.zeros(batch, k, dtype=torch.long, device=device),
            nodes=nodes,
            fin_sequences=seqs.clone(),
            fin_scores=torch.full((batch, k), _NEG, device=device),
            fin_items=torch.full((batch, k), -1, dtype=torch.long, device=device),
            fin_done=torch.zeros(batch, k, dtype=torch.bool, device=device),
            open=torch.ones(batch, 1, dtype=torch.bool, device=device),
            cur_len=1,
            max_length=max_length,
            pad=pad,
        )

    def last_tokens(self) -> torch.Tensor:
        return self.sequences[:, :, self.cur_len - 1].reshape(-1, 1)

    def advance(self, cand: _Candidates, cfg: BeamSearchConfig, eos: int, trie: CompiledTrie | None) -> bool:
        """One HF step given the top-2K candidates; returns True when the search is over."""
        k = cfg.num_beams
        cand_seqs = _gather(self.sequences, cand.beam)
        cand_seqs[:, :, self.cur_len] = torch.where(cand.token >= 0, cand.token, self.pad)
        hits = cand.token == eos
        if self.cur_len + 1 >= self.max_length:
            hits = torch.ones_like(hits)
        # e. next running beams: the best K not finished
        masked = cand.scores + hits.to(torch.float32) * _NEG
        sel = torch.topk(masked, k)[1]
        self.sequences = _gather(cand_seqs, sel)
        self.running_scores = _gather(masked, sel)
        self.running_beam = _gather(cand.beam, sel)
        self.nodes = _gather(cand.node, sel)
        # f. finished hypotheses
        items = self._candidate_items(cand, hits, eos, trie)
        self._update_finished(cand, cand_seqs, items, hits, cfg)
        self.cur_len += 1
        self._update_open(cfg)
        improvement_possible = bool(self.open.any())
        exists_open_beam = not (bool(self.fin_done.all()) and cfg.early_stopping is True)
        return not (improvement_possible and exists_open_beam and not bool(hits.all()))

    @staticmethod
    def _candidate_items(cand: _Candidates, hits: torch.Tensor, eos: int, trie) -> torch.Tensor:
        if trie is None:
            return torch.full_like(cand.token, -1)
        real = hits & (cand.token == eos) & (cand.scores > _JUNK) & (cand.node >= 0)
        return torch.where(real, trie.node_item[cand.node.clamp(min=0)], -1)

    def _update_finished(self, cand, cand_seqs, items, hits, cfg: BeamSearchConfig) -> None:
        k = cfg.num_beams
        top_k_mask = torch.zeros_like(hits)
        top_k_mask[:, :k] = True
        just_finished = hits & top_k_mask
        norm = cand.scores / ((self.cur_len + 1 - 1) ** cfg.length_penalty)
        full = torch.all(self.fin_done, dim=-1, keepdim=True) & (cfg.early_stopping is True)
        norm = norm + full.to(torch.float32) * _NEG
        norm = norm + (~self.open).to(torch.float32) * _NEG
        norm = norm + (~just_finished) * _NEG
        merged_scores = torch.cat([self.fin_scores, norm], dim=1)
        sel = torch.topk(merged_scores, k)[1]
        self.fin_scores = _gather(merged_scores, sel)
        self.fin_sequences = _gather(torch.cat([self.fin_sequences, cand_seqs], dim=1), sel)
        self.fin_items = _gather(torch.cat([self.fin_items, items], dim=1), sel)
        self.fin_done = _gather(torch.cat([self.fin_done, just_finished], dim=1), sel)

    def _update_open(self, cfg: BeamSearchConfig) -> None:
        """HF's ``_check_early_stop_heuristic`` (after cur_len was incremented)."""
        if cfg.early_stopping == "never" and cfg.length_penalty > 0.0:
            length = self.max_length - 1
        else:
            length = self.cur_len - 1
        best_running = self.running_scores[:, :1] / (length**cfg.length_penalty)
        worst_finished = torch.where(
            self.fin_done,
            torch.min(self.fin_scores, dim=1, keepdim=True)[0],
            torch.full_like(self.fin_scores, _NEG),
        )
        self.open = self.open & torch.any(best_running > worst_finished, dim=-1, keepdim=True)

    def result(self, top_k: int, constrained: bool) -> BeamResult:
        """Best ``top_k`` finished; unconstrained mode keeps HF's scores as they are (there are no items)."""
        items = self.fin_items[:, :top_k]
        valid = items >= 0 if constrained else torch.ones_like(items, dtype=torch.bool)
        scores = torch.where(
            valid, self.fin_scores[:, :top_k], torch.full_like(self.fin_scores[:, :top_k], -torch.inf)
        )
        return BeamResult(
            items=items, scores=scores, sequences=self.fin_sequences[:, :top_k], steps=self.cur_len - 1
        )


def _gather(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """HF's ``_gather_beams``: select along dim 1 with a [B, n] index."""
    while index.dim() < tensor.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(tensor, index, dim=1)
