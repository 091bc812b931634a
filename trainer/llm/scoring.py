"""Batched answer log-probabilities of a causal LM: the one primitive behind SFT, DMPO and AUC evaluation.

Layout: every row is ``[pad ... pad | prompt | answer]`` (left padding), so all answers end at the last
column. Two things follow, and they are why this module exists rather than a plain `model(...).loss`:

- only the last ``A + 1`` positions (A = longest answer in the batch) need logits; the model is called with
  `logits_to_keep`, so the LM head and the log-softmax over the vocabulary (49k for SmolLM2, 32k for Llama)
  never run on prompt tokens — the prompt is 10x longer than the answer here;
- position ids are derived from the attention mask, so a left-padded row scores exactly like the same row
  alone (checked against the unbatched reference in tests).

The loss is only ever taken on answer tokens; the prompt is context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class EncodedPair:
    """Token ids of one (prompt, answer) pair, kept separate so the answer span is exact."""

    prompt_ids: list[int]
    answer_ids: list[int]

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.answer_ids)


def encode_pair(
    tokenizer, prompt: str, answer: str, max_length: int, append_eos: bool = True, where: str = "<input>"
) -> EncodedPair:
    """Tokenise prompt and answer separately (so tokens never merge across the boundary).

    Prompts must already fit (see `trainer.recipes.dmpo.data.fit_prompt`, which drops the oldest history items);
    an over-long pair here is a bug upstream, reported with `where` (file and record).
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if append_eos and tokenizer.eos_token_id is not None:
        answer_ids = answer_ids + [tokenizer.eos_token_id]
    if not answer_ids:
        raise ValueError(f"{where}: empty answer")
    if len(prompt_ids) + len(answer_ids) > max_length:
        raise ValueError(
            f"{where}: prompt+answer is {len(prompt_ids) + len(answer_ids)} tokens > max_length={max_length}"
        )
    return EncodedPair(prompt_ids, answer_ids)


def collate_pairs(pairs: Sequence[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad to one tensor batch: input_ids, attention_mask, position_ids, answer_mask (all [B, T])."""
    width = max(len(p) for p in pairs)
    batch = len(pairs)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention = torch.zeros((batch, width), dtype=torch.long)
    answer_mask = torch.zeros((batch, width), dtype=torch.bool)
    for row, pair in enumerate(pairs):
        ids = pair.prompt_ids + pair.answer_ids
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention[row, width - len(ids) :] = 1
        answer_mask[row, width - len(pair.answer_ids) :] = True
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "position_ids": position_ids,
        "answer_mask": answer_mask,
    }


def _is_training(model: nn.Module) -> bool:
    """Train/eval mode of a plain module or of an engine wrapper (which exposes `.module`)."""
    return bool(getattr(model, "module", model).training)


@dataclass
class AnswerLogProbs:
    """Per-token log-probabilities of the answers, [B, A], zero where `mask` is False."""

    token_logp: torch.Tensor
    mask: torch.Tensor

    @property
    def count(self) -> torch.Tensor:
        return self.mask.sum(-1)

    @property
    def total(self) -> torch.Tensor:
        """log π(y|x): summed over answer tokens (what DPO/DMPO log-ratios use)."""
        return self.token_logp.sum(-1)

    @property
    def mean(self) -> torch.Tensor:
        """Length-normalised log-likelihood (mean token log-prob)."""
        return self.total / self.count

    @property
    def mean_prob(self) -> torch.Tensor:
        """DMPO eq. 4: the average of the answer tokens' probabilities."""
        return (self.token_logp.exp() * self.mask).sum(-1) / self.count


def model_device(model: nn.Module) -> torch.device:
    """Where a plain, PEFT- or engine-wrapped model computes (ZeRO-3's partitioned parameters included)."""
    return next(getattr(model, "module", model).parameters()).device


def answer_logprobs(model: nn.Module, batch: dict[str, torch.Tensor]) -> AnswerLogProbs:
    """Forward `batch` (from `collate_pairs`) and gather log p(answer token | prefix) for answer tokens only.
    The result lives on the model's device; a batch still on the host is moved there (scoring outside the
    Trainer, which moves its batches itself)."""
    device = model_device(model)
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    answer_mask = batch["answer_mask"]
    span = int(answer_mask.sum(-1).max())  # A: all answers end at the last column
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=span + 1,
        use_cache=False,
    )
    logits = out.logits[:, :-1].float()  # position t predicts token t+1
    targets = batch["input_ids"][:, -span:]
    mask = answer_mask[:, -span:]
    # log_softmax(x)[y] = x[y] - logsumexp(x): avoids materialising a second [B, A, V] tensor.
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    token_logp = (picked - torch.logsumexp(logits, dim=-1)) * mask
    return AnswerLogProbs(token_logp=token_logp, mask=mask)


def sft_loss(logps: AnswerLogProbs) -> torch.Tensor:
    """Token-level mean negative log-likelihood over answer tokens only (TALLRec / DMPO eq. 2)."""
    return -logps.token_logp.sum() / logps.count.sum()


@torch.no_grad()
def score_pairs(
    model: nn.Module, pairs: Sequence[EncodedPair], pad_id: int, batch_size: int = 8
) -> AnswerLogProbs:
    """Score many pairs in batches (sorted by length to minimise padding); rows come back in input order."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i]))
    span = max(len(p.answer_ids) for p in pairs)
    token_logp = torch.zeros((len(pairs), span))
    mask = torch.zeros((len(pairs), span), dtype=torch.bool)
    was_training = _is_training(model)
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            lp = answer_logprobs(model, collate_pairs([pairs[i] for i in rows], pad_id))
            width = lp.mask.shape[1]
            token_logp[rows, span - width :] = lp.token_logp.float().cpu()
            mask[rows, span - width :] = lp.mask.cpu()
    finally:
        model.train(was_training)
    return AnswerLogProbs(token_logp=token_logp, mask=mask)


def _packed_candidates(
    candidate_ids: Sequence[list[int]], plen: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All candidates in ONE row after the prompt: ids [1, N], position ids [1, N] (each candidate restarts at
    `plen`) and an additive 4D mask [1, 1, N, plen + N] (every token sees the whole prompt and the earlier
    tokens of its own candidate only — block-diagonal causal)."""
    lengths = torch.tensor([len(c) for c in candidate_ids])
    owner = torch.repeat_interleave(torch.arange(len(candidate_ids)), lengths)
    offset = torch.cat([torch.arange(n) for n in lengths.tolist()])
    n_tok = int(lengths.sum())
    own = (owner[:, None] == owner[None, :]) & (offset[None, :] <= offset[:, None])
    allowed = torch.cat([torch.ones((n_tok, plen), dtype=torch.bool), own], dim=1)
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    ids = torch.tensor([t for c in candidate_ids for t in c]).unsqueeze(0)
    return ids, (plen + offset).unsqueeze(0), mask[None, None]


@torch.no_grad()
def score_candidates(
    model: nn.Module, prompt_ids: list[int], candidate_ids: Sequence[list[int]], pad_id: int
) -> AnswerLogProbs:
    """Score C answers to ONE prompt, running the prompt once and sharing its KV cache.

    Re-ranking (PALR: 50 candidates) and pairwise AUC (DMPO: 2 orders) score many short answers after
    one long prompt; the naive way (`score_pairs`) re-encodes the prompt C times. Here the prompt runs once
    (batch 1, only its last logit kept) and all candidates run as ONE packed row over that cache, isolated
    from each other by a block-diagonal mask (`_packed_candidates`). Repeating the cache C times instead
    (batch C) copied C x the prompt's keys/values per layer and padded every candidate to the longest: 2.3x
    slower per user with SmolLM2 at 50 candidates (`bench/palr_rerank_speed.py`). Results equal `score_pairs` (tested);
    `pad_id` only fills the returned [C, A] layout's unused slots.
    """
    if not candidate_ids or any(not c for c in candidate_ids):
        raise ValueError("score_candidates needs at least one non-empty candidate")
    impl = _attn_implementation(model)
    if impl.startswith("flash_attention"):
        # flash-attn kernels take no arbitrary mask: candidates would silently attend to each other.
        raise ValueError(
            f"score_candidates packs candidates under a 4D attention mask, which {impl} ignores; "
            "load the model with attn_implementation='sdpa' (or 'eager') for scoring"
        )
    was_training = _is_training(model)
    model.eval()
    device = model_device(model)
    try:
        first = model(input_ids=torch.tensor([prompt_ids], device=device), use_cache=True, logits_to_keep=1)
        packed = _packed_candidates(candidate_ids, len(prompt_ids), first.logits.dtype)
        ids, positions, mask = (t.to(device) for t in packed)
        starts = torch.tensor([0] + [len(c) for c in candidate_ids]).cumsum(0)[:-1].tolist()
        # Token j > 0 of a candidate is predicted by the packed position before it; token 0 by the prompt's
        # last logit. A candidate's last token predicts nothing: its LM-head row is never computed.
        keep = torch.cat(
            [torch.arange(s, s + len(c) - 1) for s, c in zip(starts, candidate_ids, strict=True)]
        )
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=first.past_key_values,
            use_cache=True,
            logits_to_keep=keep.to(device),
        )
        return _gather_candidates(first.logits[0, -1], out.logits[0], candidate_ids, pad_id)
    finally:
        model.train(was_training)


def _attn_implementation(model: nn.Module) -> str:
    """The HF attention implementation behind a plain, PEFT-wrapped or engine-wrapped (`.module`) model."""
    config = getattr(getattr(model, "module", model), "config", None)
    return str(getattr(config, "_attn_implementation", None) or "eager")


def _gather_candidates(
    prompt_logit: torch.Tensor, packed_logits: torch.Tensor, candidate_ids: Sequence[list[int]], pad_id: int
) -> AnswerLogProbs:
    """[C, A] token log-probs (left-aligned) from the prompt's last logit ([V]: every candidate's first token)
    and the kept packed logits ([N - C, V]: the other tokens, in packed order)."""
    n_cand, width = len(candidate_ids), max(len(c) for c in candidate_ids)
    cand = torch.full((n_cand, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n_cand, width), dtype=torch.bool)
    for row, c in enumerate(candidate_ids):
        cand[row, : len(c)], mask[row, : len(c)] = torch.tensor(c), True
    first = mask.clone()
    first[:, 1:] = False
    flat = torch.empty(int(mask.sum()))  # row-major over `mask` = packed order
    device = packed_logits.device  # the log-softmax runs where the logits are; only [N] values come back
    flat[first[mask]] = token_logprobs(prompt_logit.expand(n_cand, -1), cand[:, 0].to(device)).cpu()
    flat[~first[mask]] = token_logprobs(packed_logits, cand[mask & ~first].to(device)).cpu()
    token_logp = torch.zeros((n_cand, width))
    token_logp[mask] = flat
    return AnswerLogProbs(token_logp=token_logp, mask=mask)


_ROWS_PER_CHUNK = 64  # 64 x 49k vocab x 4 B = 12.6 MB: small enough for the allocator to reuse


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[target] per row ([N, V], [N] -> [N]), in chunks of rows.

    Whole-tensor `logsumexp` on 600 x 49k logits allocates two more fresh 118 MB temporaries; on this VM
    their page faults cost as much as the LM head itself (0.5 s). Chunks keep the temporaries small and reused.
    """
    out = [torch.zeros(0, device=logits.device)]
    for rows, tgt in zip(logits.split(_ROWS_PER_CHUNK), targets.split(_ROWS_PER_CHUNK), strict=True):
        rows = rows.float()
        out.append(rows.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(rows, dim=-1))
    return torch.cat(out)
