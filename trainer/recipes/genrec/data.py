"""GenRec inputs: user/item vocabularies, sequence -> token ids with exact ID alignment, collate functions.

GenRec (paper 000, §4.1) feeds BART the token sequence ``[BEG] Tok(u) Tok(t_1) ... Tok(t_n) [END]`` and adds
to every token the user-ID embedding (user tokens) or the item-ID embedding (item tokens). So besides
``input_ids`` each batch carries two index tensors of the same shape:

* ``user_index[b, j]``: row of the user table for a token of the user's ID, 0 elsewhere;
* ``item_index[b, j]``: row of the item table for EVERY sub-token of an item's ID, 0 elsewhere
  (``item_1234`` -> ``item``, ``_``, ``12``, ``34`` all carry row 1234, as in the paper's example).

Row 0 of both tables means "no ID" (BEG/END/[MASK]/padding). A token is never both.

Textual IDs (our choice, following the paper's ``user_i`` / ``item_i`` words): item ids of the corpus are
namespaced strings (``beauty:B004756YJA``), which would make long, meaningless token runs. Each item gets a
dense row ``1..N`` (items sorted by namespaced id) and the word ``item_<row>``; users (keyed by dataset and
user, so two platforms never share a user) get ``user_<row>``. The number in the word and the embedding row
are the same, so the textual ID and the ID embedding always name the same item.

Alignment is exact by construction, not recovered afterwards: every word is tokenised on its own
(``add_special_tokens=False``; the tokenizers here split at spaces anyway) and the sequence is the
concatenation of known spans. The decoder target of an item is the same span + ``eos``, so the
encoder's and decoder's tokenisation of an item are identical and the trie is built from the same spans.

Masking (paper §4.2-4.3, Fig. 2):

* **pretrain (cloze)**: exactly one item of the user's *training* sequence is replaced by ONE ``[MASK]``
  token (its ID embedding dropped: row 0) and is the decoder target. Source ``"sequences"`` reads the
  valid-split sample of each user, whose history is the training sequence ``items[:-2]``, and DROPS its target;
  ``"prefixes"`` reads train-split samples and uses ``history + [target]``. Either way the valid and test
  targets never enter pretraining. The masked position is a pure function of (seed, sample key, position
  in the epoch order), so it changes every epoch and a resumed run masks exactly as the uninterrupted one.
* **finetune / evaluation**: ``[MASK]`` appended after the history, target = the sample's target.

Truncation keeps the most recent items (``max_history`` items, ``max_input_tokens`` tokens) and is counted.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fusionrec.data_pipeline.loader import SPLITS, LoaderConfig, ShardDataset
from fusionrec.trainer.recipes.genrec.config import GenRecDataConfig
from fusionrec.trainer.tokens import IGNORE_INDEX, pad_right

NO_ID = 0  # row 0 of both ID tables: "this token is not part of a user/item ID"
MASK_TOKEN = "<mask>"


# ------------------------------------------------------------------------------------------- vocabulary


def user_key(dataset: str, user: str) -> str:
    """Users are per platform: the same raw user id on two datasets is two users."""
    return f"{dataset}/{user}"


@dataclass(frozen=True)
class GenRecVocab:
    """Users and items of a corpus; row ``i + 1`` of an ID table belongs to ``users[i]`` / ``items[i]``."""

    users: tuple[str, ...]
    items: tuple[str, ...]
    _user_rows: dict[str, int] = field(repr=False, compare=False, default_factory=dict)
    _item_rows: dict[str, int] = field(repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        if not self.users or not self.items:
            raise ValueError(
                f"GenRec vocabulary needs users and items, got {len(self.users)}/{len(self.items)}"
            )
        for what, names, rows in (
            ("user", self.users, self._user_rows),
            ("item", self.items, self._item_rows),
        ):
            rows.update({name: i + 1 for i, name in enumerate(names)})
            if len(rows) != len(names):
                raise ValueError(f"GenRec vocabulary lists a {what} twice")

    @property
    def num_users(self) -> int:
        return len(self.users)

    @property
    def num_items(self) -> int:
        return len(self.items)

    def user_row(self, dataset: str, user: str) -> int:
        row = self._user_rows.get(user_key(dataset, user))
        if row is None:
            raise ValueError(f"user {user!r} of dataset {dataset!r} is not in the GenRec vocabulary")
        return row

    def item_row(self, item: str) -> int:
        row = self._item_rows.get(item)
        if row is None:
            raise ValueError(f"item {item!r} is not in the GenRec vocabulary")
        return row

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for names in (self.users, self.items):
            h.update("\n".join(names).encode())
            h.update(b"\0")
        return h.hexdigest()

    def state_dict(self) -> dict[str, Any]:
        return {"users": list(self.users), "items": list(self.items), "sha256": self.sha256}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> GenRecVocab:
        vocab = cls(tuple(state["users"]), tuple(state["items"]))
        if vocab.sha256 != state["sha256"]:
            raise ValueError("GenRec vocabulary state is corrupted (sha256 mismatch)")
        return vocab

    @classmethod
    def from_samples(cls, samples: Iterable[dict[str, Any]]) -> GenRecVocab:
        """Every user and every item (history or target) of ``samples``, sorted."""
        users: set[str] = set()
        items: set[str] = set()
        for s in samples:
            users.add(user_key(s["dataset"], s["user"]))
            items.update(s["history"])
            items.add(s["target"])
        return cls(tuple(sorted(users)), tuple(sorted(items)))

    @classmethod
    def from_corpus(cls, root: str | Path, datasets: Sequence[str] = ()) -> GenRecVocab:
        """Scan all splits of a shard corpus once (histories are capped in shards, so no split alone has every
        item; together they do: each item is a target or the first item of a train history)."""
        cfg = LoaderConfig(splits=list(SPLITS), datasets=list(datasets), shuffle=False, batch_size=1)
        return cls.from_samples(ShardDataset(root, cfg))


# ------------------------------------------------------------------------------------------- encoding


@dataclass
class Encoded:
    """One encoder input: ids and the per-token ID-table rows (same length)."""

    input_ids: list[int]
    user_index: list[int]
    item_index: list[int]
    truncated: int = 0  # items dropped from the front


class SequenceEncoder:
    """Turns (user row, item rows) into aligned token ids; owns the tokenisation of every ID word."""

    def __init__(self, tokenizer: Any, vocab: GenRecVocab, cfg: GenRecDataConfig) -> None:
        self.cfg, self.vocab = cfg, vocab
        self.pad, self.eos = tokenizer.pad_token_id, tokenizer.eos_token_id
        self.bos = tokenizer.bos_token_id  # None for T5-style tokenizers: no [BEG], only [END]
        self.mask = tokenizer.mask_token_id
        if self.pad is None or self.eos is None or self.mask is None:
            raise ValueError(
                f"GenRec needs pad, eos and mask tokens (pad={self.pad}, eos={self.eos}, mask={self.mask}); "
                "use prepare_tokenizer()"
            )
        self.user_words = [f"{cfg.user_prefix}{i + 1}" for i in range(vocab.num_users)]
        self.item_words = [f"{cfg.item_prefix}{i + 1}" for i in range(vocab.num_items)]
        self.user_tokens = _encode_words(tokenizer, self.user_words)
        self.item_tokens = _encode_words(tokenizer, self.item_words)
        self._specials = int(self.bos is not None) + 1  # [BEG]? + [END]

    def item_token_sequences(self) -> list[list[int]]:
        """Decoder token spans of items 0..N-1 (trie item index = row - 1), without eos."""
        return self.item_tokens

    def target_labels(self, item_row: int) -> list[int]:
        return [*self.item_tokens[item_row - 1], self.eos]

    def _fit(self, user_row: int, item_rows: Sequence[int], extra: int) -> tuple[list[int], int]:
        """Most recent items whose tokens fit ``max_input_tokens`` (with ``extra`` tokens reserved)."""
        rows = list(item_rows[-self.cfg.max_history :])
        budget = self.cfg.max_input_tokens - self._specials - extra - len(self.user_tokens[user_row - 1])
        keep = 0
        for row in reversed(rows):
            budget -= len(self.item_tokens[row - 1])
            if budget < 0:
                break
            keep += 1
        return rows[len(rows) - keep :], len(item_rows) - keep

    def encode(self, user_row: int, item_rows: Sequence[int], mask_at: int | None = None) -> Encoded:
        """``[BEG] user items [END]``; ``mask_at=None`` appends ``[MASK]`` (finetune/eval), ``mask_at=i``
        replaces item ``i`` of the kept (truncated) items by ``[MASK]`` (cloze)."""
        kept, dropped = self._fit(user_row, item_rows, extra=1 if mask_at is None else 0)
        ids: list[int] = [] if self.bos is None else [self.bos]
        users = [NO_ID] * len(ids)
        utoks = self.user_tokens[user_row - 1]
        ids += utoks
        users += [user_row] * len(utoks)
        items = [NO_ID] * len(ids)
        for i, row in enumerate(kept):
            toks = [self.mask] if i == mask_at else self.item_tokens[row - 1]
            ids += toks
            items += [NO_ID if i == mask_at else row] * len(toks)
        if mask_at is None:
            ids.append(self.mask)
            items.append(NO_ID)
        ids.append(self.eos)
        items.append(NO_ID)
        users += [NO_ID] * (len(ids) - len(users))
        return Encoded(ids, users, items, dropped)

    def kept_count(self, user_row: int, item_rows: Sequence[int]) -> int:
        """How many items :meth:`encode` keeps in cloze mode (the candidates for the mask)."""
        return len(self._fit(user_row, item_rows, extra=0)[0])


def _encode_words(tokenizer: Any, words: list[str]) -> list[list[int]]:
    """Tokenise ID words in one batched call; an ID containing ``<unk>`` could never be decoded back."""
    encoded = tokenizer(words, add_special_tokens=False)["input_ids"]
    unk = getattr(tokenizer, "unk_token_id", None)
    for word, toks in zip(words, encoded, strict=True):
        if not toks or (unk is not None and unk in toks):
            raise ValueError(f"the tokenizer cannot encode the ID word {word!r} (got {toks})")
    return [list(t) for t in encoded]


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Add the ``[MASK]`` token when the tokenizer has none (the project's T5-style tokenizers)."""
    if tokenizer.mask_token_id is None:
        tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    return tokenizer


def id_words(vocab: GenRecVocab, cfg: GenRecDataConfig) -> list[str]:
    """Every ID word, e.g. to train a tokenizer that covers them."""
    users = [f"{cfg.user_prefix}{i + 1}" for i in range(vocab.num_users)]
    return users + [f"{cfg.item_prefix}{i + 1}" for i in range(vocab.num_items)]


# ------------------------------------------------------------------------------------------- collate


def cloze_position(seed: int, key: str, pos: int, n: int) -> int:
    """The masked item of a pretraining sequence: uniform in [0, n), a pure function of its arguments."""
    return random.Random(f"{seed}|{key}|{pos}").randrange(n)


def _batch(
    encs: list[Encoded], labels: list[list[int]], real: list[bool], pad: int
) -> dict[str, torch.Tensor]:
    ids = pad_right([e.input_ids for e in encs], pad)
    return {
        "input_ids": ids,
        "attention_mask": pad_right([[1] * len(e.input_ids) for e in encs], 0),
        "user_index": pad_right([e.user_index for e in encs], NO_ID),
        "item_index": pad_right([e.item_index for e in encs], NO_ID),
        # Loader padding copies (not real) get no labels at all: they must not train the model.
        "labels": pad_right([lab if r else [] for lab, r in zip(labels, real, strict=True)], IGNORE_INDEX),
        "is_real": torch.tensor(real, dtype=torch.bool),
        "truncated_items": torch.tensor(sum(e.truncated for e, r in zip(encs, real, strict=True) if r)),
    }


class FinetuneCollate:
    """``[MASK]`` appended; target = the sample's target. Also used for evaluation (``with_eval=True``
    adds ``target_items`` (trie index, -1 for loader padding) and ``history_items`` for exclusion)."""

    def __init__(self, encoder: SequenceEncoder, with_eval: bool = False) -> None:
        self.encoder, self.with_eval = encoder, with_eval

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        enc, vocab = self.encoder, self.encoder.vocab
        encs, labels, real, targets, hist = [], [], [], [], []
        for s in samples:
            rows = [vocab.item_row(i) for i in s["history"]]
            target = vocab.item_row(s["target"])
            encs.append(enc.encode(vocab.user_row(s["dataset"], s["user"]), rows))
            labels.append(enc.target_labels(target))
            real.append(not s.get("_pad", False))
            targets.append(target - 1 if real[-1] else -1)
            hist.append([r - 1 for r in rows])
        batch = _batch(encs, labels, real, enc.pad)
        if self.with_eval:
            batch["target_items"] = torch.tensor(targets, dtype=torch.int64)
            batch["history_items"] = pad_right(hist, -1)
        return batch


class ClozeCollate:
    """Pretraining: one item of each user's training sequence masked (see the module docstring)."""

    def __init__(self, encoder: SequenceEncoder, seed: int) -> None:
        self.encoder, self.seed = encoder, seed

    def sequence(self, sample: dict[str, Any]) -> list[str]:
        """The training items a pretraining sample contributes; never a valid/test target."""
        split, source = sample["split"], self.encoder.cfg.pretrain_source
        if source == "sequences" and split == "valid":
            return list(sample["history"])  # = items[:-2]; the valid target is dropped
        if source == "prefixes" and split == "train":
            return [*sample["history"], sample["target"]]
        raise ValueError(
            f"sample {sample.get('__key__', '?')!r}: pretrain_source={source!r} reads only "
            f"{'valid' if source == 'sequences' else 'train'}-split samples, got split {split!r}"
        )

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        enc, vocab = self.encoder, self.encoder.vocab
        encs, labels, real = [], [], []
        empty = 0
        for s in samples:
            rows = [vocab.item_row(i) for i in self.sequence(s)]
            user = vocab.user_row(s["dataset"], s["user"])
            n = enc.kept_count(user, rows)
            if n == 0:  # a user whose training sequence is empty: nothing to mask (counted, not dropped)
                empty += 1
                encs.append(enc.encode(user, rows))
                labels.append([])
                real.append(False)
                continue
            at = cloze_position(self.seed, s.get("__key__", ""), int(s.get("_pos", 0)), n)
            e = enc.encode(user, rows, mask_at=at)
            masked_row = rows[len(rows) - n + at]
            encs.append(e)
            labels.append(enc.target_labels(masked_row))
            real.append(not s.get("_pad", False))
        batch = _batch(encs, labels, real, enc.pad)
        batch["empty_sequences"] = torch.tensor(empty)
        return batch
