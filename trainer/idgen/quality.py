"""Quality diagnostics of an ID table, and the gate that refuses a degenerate one (torch-free).

A textual ID is worth ranking when it is made of the item's own words, tells items apart and is not a stub.
A random tiny ID generator emits character junk (``tttttttt``, ``eeeesy``, ``nenn``) that ranks at random
level while looking like a valid table, so every ID table (the checkpoint's training table and each zero-shot
table) is described by ONE function, :func:`id_quality`, and the zero-shot harness checks it with
:func:`check_quality` before any user is scored.

Diagnostics (all shares in [0, 1]):

* ``word_in_text_share``: of all words of all IDs, the share found among the words of the item's own text
  (text and title; words = ``\\w+`` lower-cased, as IDs are normalised). ``items_all_words_in_text_share``:
  items whose every ID word is in their text. ``None`` when no texts are given.
* ``distinct_id_share``: distinct IDs / items (1.0 for any valid :class:`IDTable`);
  ``duplicate_base_share``: 1 - distinct *bases* / items, where the base is the ID without a trailing
  ``<space><number>`` de-duplication suffix (``tttt``, ``tttt 2``, ``tttt 3`` are one base for 3 items; a
  number that is a word of the item's own text is part of the ID, not a suffix).
* ``short_id_share``: IDs with fewer than ``short_chars`` letters/digits once the suffix is removed.
* ``mean_words`` (and ``mean_tokens`` when token lengths are given).
* attempts, from the table's own stats: ``second_attempt_share`` and ``fallback_share`` (Algorithm 1), or
  ``lengthened_share`` and ``suffixed_share`` (title IDs); absent keys are left out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

_WORD = re.compile(r"\w+")
_SUFFIX = re.compile(r"^(.*\S)\s+\d+$")
QUALITY_MODES = ("refuse", "warn")


@dataclass(frozen=True)
class QualityThresholds:
    """What makes a table degenerate (any one violated). Defaults and why:

    - ``min_word_in_text = 0.5``: title IDs score ~1.0 (every word comes from the title); a generator that
      learned to emit the item's words scores well above 0.5; the character junk of an untrained generator
      scores ~0. Half the ID words being invented is already far from "IDs made of the item's text".
    - ``max_duplicate_base = 0.2``: more than one item in five sharing its base ID with another (told apart
      only by a number suffix) means the IDs do not distinguish the items; title tables of real catalogues
      suffix a few percent (identical titles).
    - ``max_short_ids = 0.2`` with ``short_chars = 3``: IDs of one or two characters carry no meaning.
    """

    min_word_in_text: float = 0.5
    max_duplicate_base: float = 0.2
    max_short_ids: float = 0.2
    short_chars: int = 3

    def __post_init__(self) -> None:
        for name in ("min_word_in_text", "max_duplicate_base", "max_short_ids"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"id quality threshold {name} must be in [0, 1], got {getattr(self, name)}")
        if self.short_chars < 1:
            raise ValueError(f"id quality threshold short_chars must be >= 1, got {self.short_chars}")

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any]) -> QualityThresholds:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown id quality thresholds {unknown} (known: {sorted(known)})")
        return cls(**dict(overrides))


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _base(tid: str, text: str | None = None) -> str:
    """The ID without a trailing number suffix, unless that number is a word of the item's own text (a
    title like "usb cable 3" keeps its number; a de-duplication suffix is not from the text)."""
    m = _SUFFIX.match(tid)
    if not m or (text is not None and tid.rsplit(None, 1)[1] in _words(text)):
        return tid
    return m.group(1)


def id_quality(
    ids: Mapping[str, str],
    texts: Mapping[str, str] | None = None,
    *,
    token_lengths: Sequence[int] | None = None,
    stats: Mapping[str, Any] | None = None,
    short_chars: int = QualityThresholds.short_chars,
) -> dict[str, Any]:
    """The diagnostics of item → textual ID `ids` (see the module docstring).

    `texts`: item → its own text (text and title joined); items missing from it are not counted in the
    word-in-text shares. `token_lengths`: tokens per ID in `ids` order (e.g. from the recommender's
    tokenizer). `stats`: the table's generation stats (attempt counts)."""
    n = len(ids)
    out: dict[str, Any] = {"items": n}
    if n == 0:
        return out
    values = list(ids.values())
    bases = [_base(t, texts.get(i) if texts is not None else None) for i, t in ids.items()]
    out["distinct_id_share"] = len(set(values)) / n
    out["duplicate_base_share"] = 1.0 - len(set(bases)) / n
    out["short_id_share"] = sum(len(re.sub(r"\W", "", b)) < short_chars for b in bases) / n
    out["mean_words"] = sum(len(_words(t)) for t in values) / n
    if token_lengths is not None:
        if len(token_lengths) != n:
            raise ValueError(f"token_lengths has {len(token_lengths)} entries for {n} IDs")
        out["mean_tokens"] = sum(token_lengths) / n
    if texts is not None:
        found = total = full = counted = 0
        for item, tid in ids.items():
            if item not in texts:
                continue
            vocab, words = set(_words(texts[item])), _words(tid)
            hit = sum(w in vocab for w in words)
            found, total, counted = found + hit, total + len(words), counted + 1
            full += bool(words) and hit == len(words)
        out["word_in_text_share"] = found / total if total else 0.0
        out["items_all_words_in_text_share"] = full / counted if counted else 0.0
        out["items_with_text"] = counted
    stats = stats or {}
    if "second_attempt_share" in stats:
        out["second_attempt_share"] = float(stats["second_attempt_share"])
    if "fallback" in stats:
        out["fallback_share"] = float(stats["fallback"]) / n
    for key in ("lengthened", "suffixed"):
        if key in stats:
            out[f"{key}_share"] = float(stats[key]) / n
    return out


def quality_problems(quality: Mapping[str, Any], thresholds: QualityThresholds) -> list[str]:
    """Each violated threshold as 'name value vs threshold'; [] for a table worth ranking."""
    problems = []
    word = quality.get("word_in_text_share")
    if word is not None and word < thresholds.min_word_in_text:
        problems.append(f"word_in_text_share {word:.3f} < min_word_in_text {thresholds.min_word_in_text}")
    dup = quality.get("duplicate_base_share", 0.0)
    if dup > thresholds.max_duplicate_base:
        problems.append(
            f"duplicate_base_share {dup:.3f} > max_duplicate_base {thresholds.max_duplicate_base}"
        )
    short = quality.get("short_id_share", 0.0)
    if short > thresholds.max_short_ids:
        problems.append(
            f"short_id_share {short:.3f} > max_short_ids {thresholds.max_short_ids} "
            f"(IDs under {thresholds.short_chars} letters/digits)"
        )
    return problems


def check_quality(
    quality: Mapping[str, Any], thresholds: QualityThresholds, mode: str, what: str, hint: str = ""
) -> list[str]:
    """Refuse (ValueError) or return the problems of a table (`mode` "refuse" | "warn"); [] when it passes.

    The message names the table (`what`), every violated threshold, the full diagnostics and `hint`."""
    if mode not in QUALITY_MODES:
        raise ValueError(f"id quality mode must be one of {QUALITY_MODES}, got {mode!r}")
    problems = quality_problems(quality, thresholds)
    if problems and mode == "refuse":
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in quality.items()}
        raise ValueError(
            f"{what}: degenerate ID table, refusing to score it: {'; '.join(problems)}. "
            f"Diagnostics: {shown}. Thresholds: {asdict(thresholds)}.{(' ' + hint) if hint else ''}"
        )
    return problems
