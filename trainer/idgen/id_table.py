"""`IDTable`: item id → textual ID, versioned per training round, saved with every checkpoint.

The trie of the constrained decoder is always rebuilt from the table it belongs to (DESIGN.md), so the table
carries its own version: the training round plus a SHA-256 of its content, checked again on load. Three
schemes share the interface: ``generative`` (IDGenRec's ID generator, `generator.py`), ``sequential``
(P5-SID: consecutive numbers by first appearance in the users' sequences) and ``random`` (random numbers).

Within ``generative``, `method` tells how the IDs were made: ``title`` (first title words, `title_table`,
recorded as ``stats["initial"] = "title"``) or ``generator`` (Algorithm 1 with the ID generator). `quality`
gives the table's diagnostics (`quality.py`: word-in-text share, distinct IDs, lengths, attempts).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from fusionrec.fileio import atomic_write_text
from fusionrec.trainer.idgen.quality import id_quality
from fusionrec.trainer.models.tokenizer import encode_strict
from transformers import PreTrainedTokenizerBase

SCHEMES = ("generative", "sequential", "random")
FORMAT = "fusionrec-idtable"
SCHEMA_VERSION = 1
FIRST_NUMBER = 1001  # P5/IDGenRec number their items from 1001 (avoids single-token numbers 0..999)


class IDTable:
    """An immutable, validated mapping item id → textual ID with reverse lookup and a content hash."""

    def __init__(
        self, ids: Mapping[str, str], scheme: str, round: int = 0, stats: Mapping[str, Any] | None = None
    ):
        if scheme not in SCHEMES:
            raise ValueError(f"IDTable scheme must be one of {SCHEMES}, got {scheme!r}")
        if round < 0:
            raise ValueError(f"IDTable round must be >= 0, got {round}")
        reverse: dict[str, str] = {}
        for item, tid in ids.items():
            if not isinstance(tid, str) or not tid.strip():
                raise ValueError(f"item {item!r}: textual ID {tid!r} is empty")
            if tid in reverse:
                raise ValueError(f"duplicate textual ID {tid!r}: items {reverse[tid]!r} and {item!r}")
            reverse[tid] = item
        self._ids = dict(ids)
        self._reverse = reverse
        self.scheme = scheme
        self.round = round
        self.stats: dict[str, Any] = dict(stats or {})
        self.hash = self._content_hash()

    def _content_hash(self) -> str:
        # Sorted so the hash names the mapping, not the order items happened to be generated in.
        payload = json.dumps(
            [self.scheme, sorted(self._ids.items())], ensure_ascii=False, separators=(",", ":")
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    @property
    def version(self) -> str:
        """`r<round>-<hash prefix>`: what checkpoints, tries and eval results record."""
        return f"r{self.round}-{self.hash[:12]}"

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, item: str) -> str:
        try:
            return self._ids[item]
        except KeyError:
            raise KeyError(f"item {item!r} is not in ID table {self.version}") from None

    def __contains__(self, item: object) -> bool:
        return item in self._ids

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def items(self) -> Iterable[tuple[str, str]]:
        return self._ids.items()

    def as_dict(self) -> dict[str, str]:
        return dict(self._ids)

    def lookup(self, textual_id: str) -> str:
        """Reverse lookup: the item whose textual ID is `textual_id` (KeyError if none)."""
        try:
            return self._reverse[textual_id]
        except KeyError:
            raise KeyError(f"no item has textual ID {textual_id!r} in ID table {self.version}") from None

    def get_item(self, textual_id: str) -> str | None:
        return self._reverse.get(textual_id)

    @property
    def method(self) -> str:
        """How the IDs were made: ``title`` | ``generator`` (scheme ``generative``), else the scheme."""
        if self.scheme != "generative":
            return self.scheme
        return "title" if self.stats.get("initial") == "title" else "generator"

    def with_stats(self, **extra: Any) -> IDTable:
        """The same table (same IDs, round, hash and version) with `extra` merged into its stats."""
        return type(self)(self._ids, self.scheme, self.round, {**self.stats, **extra})

    # -- statistics -----------------------------------------------------------------------------------
    def length_stats(self, tokenizer: PreTrainedTokenizerBase | None = None) -> dict[str, float]:
        """Mean/max ID length in words (and in tokens, without special tokens, when a tokenizer is given)."""
        if not self._ids:
            return {"mean_words": 0.0, "max_words": 0}
        words = [len(t.split()) for t in self._ids.values()]
        out: dict[str, float] = {"mean_words": sum(words) / len(words), "max_words": max(words)}
        if tokenizer is not None:
            toks = [
                len(x) for x in tokenizer(list(self._ids.values()), add_special_tokens=False)["input_ids"]
            ]
            out.update(mean_tokens=sum(toks) / len(toks), max_tokens=max(toks))
        return out

    def quality(
        self, texts: Mapping[str, str] | None = None, tokenizer: PreTrainedTokenizerBase | None = None
    ) -> dict[str, Any]:
        """The table's diagnostics (`quality.id_quality`): `texts` = item -> its own text (word-in-text
        shares), `tokenizer` = the recommender's (mean tokens per ID)."""
        lengths = None
        if tokenizer is not None and self._ids:
            lengths = [
                len(x) for x in tokenizer(list(self._ids.values()), add_special_tokens=False)["input_ids"]
            ]
        return id_quality(self._ids, texts, token_lengths=lengths, stats=self.stats)

    def tokenized(self, tokenizer: PreTrainedTokenizerBase) -> dict[str, list[int]]:
        """Item → token ids of its textual ID, as the recommender's labels (special tokens included, e.g. T5's
        trailing `</s>`), so the trie is [decoder_start] + these. An ID containing `<unk>` → ValueError."""
        return {item: encode_strict(tokenizer, tid, f"item {item!r}") for item, tid in self._ids.items()}

    # -- persistence ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write JSON atomically (temp file in the same folder + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "scheme": self.scheme,
            "round": self.round,
            "sha256": self.hash,
            "stats": self.stats,
            "ids": self._ids,
        }
        return atomic_write_text(path, json.dumps(doc, ensure_ascii=False, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> IDTable:
        """Read a saved table; a duplicate key, a duplicate ID or a hash mismatch → ValueError naming the file."""
        path = Path(path)

        def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            seen: dict[str, Any] = {}
            for key, value in pairs:
                if key in seen:
                    raise ValueError(f"{path}: key {key!r} appears twice")
                seen[key] = value
            return seen

        with path.open(encoding="utf-8") as fh:
            doc = json.load(fh, object_pairs_hook=no_duplicate_keys)
        if doc.get("format") != FORMAT or doc.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"{path}: not a {FORMAT} v{SCHEMA_VERSION} file")
        try:
            table = cls(doc["ids"], doc["scheme"], doc["round"], doc.get("stats"))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        if table.hash != doc["sha256"]:
            raise ValueError(
                f"{path}: content hash {table.hash[:12]} != recorded {doc['sha256'][:12]} (edited?)"
            )
        return table

    # -- baseline schemes -------------------------------------------------------------------------------
    @classmethod
    def sequential(cls, sequences: Mapping[str, Sequence[str]], holdout: int = 2, round: int = 0) -> IDTable:
        """P5-SID: number items by first appearance, walking the users' training parts first and then the
        `holdout` valid/test items (as P5 and the IDGenRec code do), so numbers follow co-occurrence."""
        ids: dict[str, str] = {}
        for part in (slice(None, -holdout if holdout else None), slice(-holdout if holdout else 0, None)):
            for seq in sequences.values():
                for item in seq[part]:
                    if item not in ids:
                        ids[item] = str(FIRST_NUMBER + len(ids))
        return cls(ids, "sequential", round, {"items": len(ids)})

    @classmethod
    def random_numeric(cls, item_ids: Iterable[str], seed: int = 0, round: int = 0) -> IDTable:
        """Random numbers 1001.. assigned by a seeded shuffle of the (sorted, de-duplicated) items."""
        items = sorted(set(item_ids))
        random.Random(seed).shuffle(items)
        ids = {item: str(FIRST_NUMBER + k) for k, item in enumerate(items)}
        return cls(ids, "random", round, {"items": len(ids), "seed": seed})
