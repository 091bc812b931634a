"""Diverse ID generation (IDGenRec Algorithm 1), batched, with exactly the sequential algorithm's result.

Algorithm 1 walks the items in a fixed order; for each it generates k = 10 candidates by diverse beam search
at (length window, λ), takes the first normalised candidate not used yet, and otherwise retries with
λ + 1 — after λ = 10 the length window moves on ([1,10) → [10,20) → …) and λ restarts at 1.

The candidates of an attempt depend only on (item text, window, λ), never on the set of used IDs, so:
1. the first attempt of *every* item is generated in large batches;
2. the walk is then replayed in Python (cheap) with all candidates known so far; an item whose known
   attempts are exhausted is "blocked" — the walk goes on speculatively past it, collecting every item
   that may need another attempt;
3. the next attempt of all blocked items is generated in one batched call, and the walk is replayed.
When a walk finishes without a blocked item it *is* Algorithm 1's sequential walk, so the table equals the
one-item-at-a-time loop (`assign_ids_sequential`, the reference protocol) while the model runs in batches.

Candidates: decoded without special tokens, lowercased, reduced to words (`\\w+` joined by one space).
An empty candidate or one the tokenizer cannot re-encode (`<unk>`) is never taken. If every attempt of
every window fails, the documented fallback takes the first non-empty candidate of the last attempt (or
"item") plus the smallest number suffix that makes it unique (counted in the stats as `fallback`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from fusionrec.trainer.idgen.candidate_store import CandidateStore
from fusionrec.trainer.idgen.candidates import CandidateCache, LocalGenerator, Runner
from fusionrec.trainer.idgen.config import DiverseBeamConfig, IDGenConfig, normalize_id
from fusionrec.trainer.idgen.id_table import IDTable
from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["DiverseBeamConfig", "IDGenConfig", "normalize_id", "generate_ids", "assign_ids_sequential",
           "user_texts", "generate_user_ids"]  # fmt: skip


def _check_texts(texts: Mapping[str, str]) -> list[str]:
    for key, text in texts.items():
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"item {key!r}: text is empty or whitespace ({text!r}); an ID needs item text")
    return list(texts)


class _Walk:
    """One replay of Algorithm 1 over the items with the candidates known so far."""

    def __init__(self, cfg: IDGenConfig, encodable: Callable[[str], bool]):
        self.cfg, self.encodable = cfg, encodable
        self.used: set[str] = set()
        self.ids: dict[str, str] = {}
        self.attempt: dict[str, int] = {}
        self.blocked: list[str] = []
        self.fallback = 0

    def run(self, keys: Sequence[str], cands: Mapping[str, list[list[str]]]) -> _Walk:
        for key in keys:
            if not self._take(key, cands.get(key, [])):
                if len(cands.get(key, [])) < self.cfg.max_attempts:
                    self.blocked.append(key)  # speculative: later items proceed as if this one took nothing
                else:
                    self._fallback(key, cands[key])
        return self

    def _take(self, key: str, attempts: list[list[str]]) -> bool:
        for a, cand_list in enumerate(attempts):
            for cand in cand_list:
                if cand and cand not in self.used and self.encodable(cand):
                    self.used.add(cand)
                    self.ids[key], self.attempt[key] = cand, a
                    return True
        return False

    def _fallback(self, key: str, attempts: list[list[str]]) -> None:
        base = next((c for c in attempts[-1] if c and self.encodable(c)), "item")
        n = 2
        while f"{base} {n}" in self.used:
            n += 1
        self.used.add(f"{base} {n}")
        self.ids[key], self.attempt[key] = f"{base} {n}", len(attempts)
        self.fallback += 1


def _encodable_fn(tokenizer: PreTrainedTokenizerBase) -> Callable[[str], bool]:
    unk, memo = tokenizer.unk_token_id, {}

    def encodable(text: str) -> bool:
        if text not in memo:
            memo[text] = unk is None or unk not in tokenizer(text, add_special_tokens=False)["input_ids"]
        return memo[text]

    return encodable


def _stats(walk: _Walk, cfg: IDGenConfig, work: int, tokenizer: PreTrainedTokenizerBase) -> dict[str, float]:
    n = max(len(walk.ids), 1)
    windows = [cfg.attempt(min(a, cfg.max_attempts - 1))[0] for a in walk.attempt.values()]
    tokens = [len(x) for x in tokenizer(list(walk.ids.values()), add_special_tokens=False)["input_ids"]] or [
        0
    ]
    return {
        "items": len(walk.ids),
        "second_attempt_share": sum(a >= 1 for a in walk.attempt.values()) / n,
        "longer_id_share": sum(w >= 1 for w in windows) / n,
        "fallback": walk.fallback,
        "max_attempt": max(walk.attempt.values(), default=0),
        "mean_id_words": sum(len(t.split()) for t in walk.ids.values()) / n,
        "mean_id_tokens": sum(tokens) / max(len(tokens), 1),
        "item_attempts_generated": work,
    }


def generate_ids(
    model: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    texts: Mapping[str, str],
    cfg: IDGenConfig | None = None,
    round: int = 0,
    *,
    runner: Runner | None = None,
    store: CandidateStore | None = None,
) -> IDTable:
    """Algorithm 1 over `texts` (key → plain text; dict order is the processing order), batched.

    Deterministic: the same model, tokenizer, texts and config give the same table, wherever the jobs run
    (`runner`: default the local `model`; e.g. Ray actors, `cluster/idgen_pool.py`) and across a kill and
    resume (`store`: the candidates on disk). Stats (see `_stats`) land in `table.stats`.
    """
    cfg = cfg or IDGenConfig()
    keys = _check_texts(texts)
    if runner is None:
        if model is None:
            raise ValueError("generate_ids needs a model or a runner")
        runner = LocalGenerator(model, tokenizer, cfg, texts)
    cache, encodable = CandidateCache(cfg, runner, store), _encodable_fn(tokenizer)
    if cache.restore() == 0:
        cache.generate(keys, cfg.batch_size)
    while True:
        walk = _Walk(cfg, encodable).run(keys, cache.cands)
        if not walk.blocked:
            break
        cache.generate(walk.blocked, cfg.batch_size)
    stats = _stats(walk, cfg, cache.items_generated + cache.items_restored, tokenizer) | {
        "walks": cache.rounds,
        "item_attempts_reused": cache.items_reused,
    }
    return IDTable(walk.ids, "generative", round, stats)


def assign_ids_sequential(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Mapping[str, str],
    cfg: IDGenConfig | None = None,
    round: int = 0,
) -> IDTable:
    """The reference protocol (IDGenRec's `generate_item_id_from_text`): one item at a time, one DBS call
    per attempt at batch 1, every attempt run. Same candidates and acceptance rule as `generate_ids` — the
    baseline of `bench idgen` and the oracle of the tests."""
    cfg = cfg or IDGenConfig()
    keys = _check_texts(texts)
    runner = LocalGenerator(model, tokenizer, cfg, texts, track_range=False)
    cache, encodable = CandidateCache(cfg, runner, reuse=False), _encodable_fn(tokenizer)
    walk = _Walk(cfg, encodable)
    for key in keys:
        while True:
            cache.generate([key], 1)
            if walk._take(key, cache.cands[key][-1:]):
                walk.attempt[key] = len(cache.cands[key]) - 1
                break
            if len(cache.cands[key]) == cfg.max_attempts:
                walk._fallback(key, cache.cands[key])
                break
    return IDTable(walk.ids, "generative", round, _stats(walk, cfg, cache.items_generated, tokenizer))


def user_texts(
    sequences: Mapping[str, Sequence[str]], item_text: Mapping[str, str], holdout: int = 2, sep: str = "; "
) -> dict[str, str]:
    """The ID-generator input of each user: the texts of the user's *training* items only.

    The valid and test targets (the last `holdout` items) never enter — IDGenRec's code joined the whole
    sequence, leaking the test item into the user ID (its issue #1). `item_text` may map to plain text or
    to the items' textual IDs (the reference used the latter). A user with no training item → ValueError.
    """
    out: dict[str, str] = {}
    for user, seq in sequences.items():
        train = list(seq[:-holdout]) if holdout else list(seq)
        if not train:
            raise ValueError(
                f"user {user!r}: {len(seq)} items leave no training item after holding out {holdout}"
            )
        missing = [i for i in train if i not in item_text]
        if missing:
            raise ValueError(f"user {user!r}: item {missing[0]!r} has no text")
        out[user] = sep.join(item_text[i] for i in train)
    return out


def generate_user_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sequences: Mapping[str, Sequence[str]],
    item_text: Mapping[str, str],
    cfg: IDGenConfig | None = None,
    holdout: int = 2,
) -> IDTable:
    """User IDs by Algorithm 1 over `user_texts` (training items only), in their own namespace."""
    with torch.no_grad():
        return generate_ids(model, tokenizer, user_texts(sequences, item_text, holdout), cfg)
