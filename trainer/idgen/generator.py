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

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from fusionrec.trainer.idgen.diverse_beam import DiverseBeamConfig, diverse_beam_search
from fusionrec.trainer.idgen.id_table import IDTable
from transformers import PreTrainedModel, PreTrainedTokenizerBase

_WORD = re.compile(r"\w+")


@dataclass
class IDGenConfig:
    """Algorithm 1's schedule (paper defaults) and the batching of the generator."""

    num_groups: int = 10  # k: candidates per attempt (one beam per group, as in IDGenRec)
    lambda_start: float = 1.0
    lambda_step: float = 1.0
    lambda_max: float = 10.0
    window: int = 10  # length windows [1, 10), [10, 20), ... in tokens
    max_windows: int = 3
    batch_size: int = 64  # items per DBS call
    max_source_len: int = 256  # input tokens of the item text (IDGenRec truncates at 256)
    length_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.num_groups < 1 or self.batch_size < 1 or self.max_source_len < 2:
            raise ValueError(
                f"num_groups, batch_size >= 1 and max_source_len >= 2 required, got "
                f"{self.num_groups}, {self.batch_size}, {self.max_source_len}"
            )
        if not 0 < self.lambda_start <= self.lambda_max or self.lambda_step <= 0:
            raise ValueError(
                f"need 0 < lambda_start <= lambda_max and lambda_step > 0, got "
                f"{self.lambda_start}, {self.lambda_max}, {self.lambda_step}"
            )
        if self.window < 2 or self.max_windows < 1:
            raise ValueError(
                f"window must be >= 2 and max_windows >= 1, got {self.window}, {self.max_windows}"
            )

    @property
    def lambdas_per_window(self) -> int:
        return int(round((self.lambda_max - self.lambda_start) / self.lambda_step)) + 1

    @property
    def max_attempts(self) -> int:
        return self.lambdas_per_window * self.max_windows

    def attempt(self, a: int) -> tuple[int, float]:
        """Attempt number a (0-based) → (length window index, λ)."""
        per = self.lambdas_per_window
        return a // per, self.lambda_start + (a % per) * self.lambda_step

    def beam_config(self, a: int) -> DiverseBeamConfig:
        """Window w allows IDs of [max(1, w·W), (w+1)·W) tokens: EOS is barred before the lower bound and the
        hypothesis (EOS included) is cut at (w+1)·W - 1 new tokens."""
        w, lam = self.attempt(a)
        return DiverseBeamConfig(
            num_groups=self.num_groups,
            beams_per_group=1,
            diversity_penalty=lam,
            min_new_tokens=max(1, w * self.window),
            max_new_tokens=(w + 1) * self.window - 1,
            length_penalty=self.length_penalty,
        )


def normalize_id(text: str) -> str:
    """Words only, lowercase, single spaces: what makes two generated IDs "the same"."""
    return " ".join(_WORD.findall(text.lower()))


def _check_texts(texts: Mapping[str, str]) -> list[str]:
    for key, text in texts.items():
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"item {key!r}: text is empty or whitespace ({text!r}); an ID needs item text")
    return list(texts)


class _Candidates:
    """Cache of generated candidates: cands[item][a] = normalised IDs of attempt a, best first.

    With `reuse`, an attempt whose λ lies inside the stable penalty range of an earlier attempt of the same
    window (`BeamOutput.lambda_range`) is not run: it has the same candidates, possibly in another order. That
    is exact for the walk: it reaches attempt a only when every candidate of the earlier attempt is taken, so
    a reused attempt never supplies an ID — except through the fallback, which reads the order of the last
    attempt, so the last attempt is always run.
    """

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: IDGenConfig, reuse: bool = True
    ):
        self.model, self.tokenizer, self.cfg, self.reuse = model.eval(), tokenizer, cfg, reuse
        self.cands: dict[str, list[list[str]]] = {}
        self.ranges: dict[str, list[tuple[float, float]]] = {}
        self.items_generated = 0  # item-attempts run through the model (work done)
        self.items_reused = 0  # item-attempts proven equal to an earlier one (no work)

    def generate(self, keys: Sequence[str], texts: Mapping[str, str], batch_size: int) -> None:
        """Generate the next attempt of every item in `keys` (after any reusable ones); items are grouped by
        attempt number so that each DBS call has one (window, λ)."""
        by_attempt: dict[int, list[str]] = {}
        for key in keys:
            a = len(self.cands.setdefault(key, []))
            while self._reused(key, a):  # a copy fails where its original failed: go on to the next attempt
                a += 1
            by_attempt.setdefault(a, []).append(key)
        for a, group in sorted(by_attempt.items()):
            beam_cfg = self.cfg.beam_config(a)
            for start in range(0, len(group), batch_size):
                chunk = group[start : start + batch_size]
                for key, (cands, span) in zip(chunk, self._run(chunk, texts, beam_cfg), strict=True):
                    self.cands[key].append(cands)
                    self.ranges.setdefault(key, []).append(span)
                self.items_generated += len(chunk)

    def _reused(self, key: str, a: int) -> bool:
        """Attempt `a` of `key` equals an earlier attempt of its window: copy it (see the class docstring)."""
        if not self.reuse or a + 1 >= self.cfg.max_attempts:
            return False
        window, lam = self.cfg.attempt(a)
        spans = self.ranges.get(key, [])
        for b in range(a - 1, -1, -1):
            if b >= len(spans) or self.cfg.attempt(b)[0] != window:
                break
            lo, hi = spans[b]
            if lo < lam < hi:
                self.cands[key].append(self.cands[key][b])
                spans.append(spans[b])
                self.items_reused += 1
                return True
        return False

    def _run(
        self, keys: Sequence[str], texts: Mapping[str, str], beam_cfg: DiverseBeamConfig
    ) -> list[tuple[list[str], tuple[float, float]]]:
        enc = self.tokenizer(
            [texts[k] for k in keys],
            max_length=self.cfg.max_source_len,
            truncation=True,
            padding=True,
            return_tensors="pt",
        )
        device = next(self.model.parameters()).device
        out = diverse_beam_search(
            self.model, enc["input_ids"].to(device), enc["attention_mask"].to(device), beam_cfg, self.reuse
        )
        flat = self.tokenizer.batch_decode(out.sequences.flatten(0, 1).cpu(), skip_special_tokens=True)
        k = out.sequences.shape[1]
        spans = [(float(lo), float(hi)) for lo, hi in out.lambda_range.tolist()]
        return [([normalize_id(t) for t in flat[i * k : (i + 1) * k]], spans[i]) for i in range(len(keys))]


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
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Mapping[str, str],
    cfg: IDGenConfig | None = None,
    round: int = 0,
) -> IDTable:
    """Algorithm 1 over `texts` (key → plain text; dict order is the processing order), batched.

    Deterministic: the same model, tokenizer, texts and config give the same table. Stats (see `_stats`)
    land in `table.stats`: `second_attempt_share`, `longer_id_share`, `mean_id_words/tokens`, `fallback`.
    """
    cfg = cfg or IDGenConfig()
    keys = _check_texts(texts)
    cache, encodable = _Candidates(model, tokenizer, cfg), _encodable_fn(tokenizer)
    pending: Sequence[str] = keys
    rounds = 0
    while True:
        cache.generate(pending, texts, cfg.batch_size)
        walk = _Walk(cfg, encodable).run(keys, cache.cands)
        rounds += 1
        if not walk.blocked:
            break
        pending = walk.blocked
    stats = _stats(walk, cfg, cache.items_generated, tokenizer) | {
        "walks": rounds,
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
    per attempt at batch 1. Same candidates and acceptance rule as `generate_ids` — the baseline of
    `bench idgen` and the oracle of the tests."""
    cfg = cfg or IDGenConfig()
    keys = _check_texts(texts)
    cache, encodable = _Candidates(model, tokenizer, cfg, reuse=False), _encodable_fn(tokenizer)
    walk = _Walk(cfg, encodable)
    for key in keys:
        while True:
            cache.generate([key], texts, 1)
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
