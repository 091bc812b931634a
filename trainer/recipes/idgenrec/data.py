"""IDGenRec's data: item texts, textual-ID tokens, prompt/label collation for both training phases.

Samples (data_pipeline's ShardLoader) hold stable item ids; the *current* ID table is joined here, at
collation time, so a regenerated table takes effect by building new collators (``IDGenRecCollator`` records
the table version it was built from). Three modes:

* ``rec``  — teacher forcing of the recommender (paper eq. 4): prompt of the history's textual IDs (template
  sampled per instance), labels = the target's ID tokens + eos, padded with -100 (the reference padded with
  0 and trained on the pads). Padding samples of the loader (``_pad``) get all-(-100) labels.
* ``id``   — the ID-generator phase (eq. 5): the same prompt and hard target, plus what the generator needs
  to produce *soft* IDs: the texts of the batch's distinct history items (encoder input), their current ID
  tokens shifted right (teacher-forced decoder input), and for every prompt token that belongs to a history
  item's ID its (batch row, token position) and (distinct item, decoding step). Positions are the exact
  token indices from the prompt builder's character spans (never found by searching for a separator), and
  are checked to hold precisely the item's ID tokens, so soft step j replaces exactly ID token j; steps
  beyond an ID's length (and its eos step) never enter.
* ``eval`` — the fixed evaluation template, otherwise like ``rec``.

Also here: ``all_samples`` (every split's samples, for the user-ID table), ``title_table`` (the offline
stand-in for the pretrained tag generator's first IDs) and ``ItemBatches`` (the rank-sharded, resumable
item loader of the optional ID-generator warm-up, text -> ID).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from fusionrec.data_pipeline.loader import SPLITS, LoaderConfig, ShardDataset
from fusionrec.trainer.idgen.generator import normalize_id
from fusionrec.trainer.idgen.id_table import IDTable
from fusionrec.trainer.prompts import PromptBuilder, token_positions
from fusionrec.trainer.recipes.idgenrec.config import CollateConfig
from fusionrec.trainer.tokens import IGNORE_INDEX, pad_right

_TITLE = re.compile(r"^\s*title:\s*([^;]*)", re.IGNORECASE)


# ---------------------------------------------------------------------- corpus side
def load_items(corpus: str | Path) -> tuple[dict[str, str], dict[str, str]]:
    """(item id -> text, item id -> title) from ``<corpus>/items.parquet`` (DESIGN.md corpus layout).

    The title is the ``title`` column when present, else the ``title: ...`` field of the rendered text, else
    the text itself. An empty text is a ValueError naming the file and item.
    """
    path = Path(corpus) / "items.parquet"
    if not path.is_file():
        raise ValueError(f"{path}: missing; an IDGenRec corpus needs items.parquet (item_id, text)")
    table = pq.read_table(path)
    for col in ("item_id", "text"):
        if col not in table.column_names:
            raise ValueError(f"{path}: no column {col!r} (has {table.column_names})")
    ids, texts = table["item_id"].to_pylist(), table["text"].to_pylist()
    titles = table["title"].to_pylist() if "title" in table.column_names else [None] * len(ids)
    text_of: dict[str, str] = {}
    title_of: dict[str, str] = {}
    for row, (item, text, title) in enumerate(zip(ids, texts, titles, strict=True)):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path}: row {row}, item {item!r}: empty text")
        if item in text_of:
            raise ValueError(f"{path}: row {row}: item {item!r} appears twice")
        text_of[item] = text
        match = _TITLE.match(text)
        title_of[item] = title if title and title.strip() else (match.group(1) if match else text)
    return text_of, title_of


def all_samples(corpus: str | Path, splits: Sequence[str] = SPLITS) -> Iterator[dict[str, Any]]:
    """Every sample of `splits` (default: all) in corpus order, the same on every rank: each rank builds the
    whole user-ID table (as it builds the whole item table) and checks its hash against the others'."""
    cfg = LoaderConfig(splits=list(splits), shuffle=False, even_batches=False, batch_size=1)
    dataset = ShardDataset(corpus, cfg, rank=0, world_size=1)
    dataset.set_epoch(0)
    yield from dataset


def title_table(titles: Mapping[str, str], first_words: int, encodable: Callable[[str], bool]) -> IDTable:
    """Initial IDs from item titles, deduplicated Algorithm-1 style (a stand-in for the tag generator).

    The paper's initial ID generator is a pretrained tag generator, which in practice emits the first salient
    words of the text. Offline we only have random tiny models, so: normalised title words, the first
    ``first_words``; a duplicate takes one more word (like Algorithm 1 lengthening the ID), and when the title
    is exhausted the smallest number suffix that makes it unique. Items are walked in the given order.
    """
    used: set[str] = set()
    ids: dict[str, str] = {}
    lengthened = suffixed = 0
    for item, title in titles.items():
        words = normalize_id(title).split() or ["item"]
        words = [w for w in words if encodable(w)] or ["item"]
        n = min(first_words, len(words))
        cand = " ".join(words[:n])
        while cand in used and n < len(words):
            n += 1
            cand = " ".join(words[:n])
            lengthened += 1
        if cand in used:
            k = 2
            while f"{cand} {k}" in used:
                k += 1
            cand, suffixed = f"{cand} {k}", suffixed + 1
        used.add(cand)
        ids[item] = cand
    stats = {"initial": "title", "items": len(ids), "lengthened": lengthened, "suffixed": suffixed}
    return IDTable(ids, "generative", 0, stats)


def encodable_fn(tokenizer: Any) -> Callable[[str], bool]:
    """Whether a word encodes without ``<unk>`` (an ID with <unk> could never be decoded back)."""
    unk = tokenizer.unk_token_id

    def encodable(text: str) -> bool:
        return unk is None or unk not in tokenizer(text, add_special_tokens=False)["input_ids"]

    return encodable


def id_tokens(table: IDTable, tokenizer: Any) -> dict[str, list[int]]:
    """Item -> token ids of its textual ID *without* special tokens (one batched tokenizer call).

    These are exactly the tokens a prompt holds for the item and the trie's paths (the label adds eos).
    An ID that encodes to nothing or to ``<unk>`` is a ValueError naming the item.
    """
    items = list(table)
    encoded = tokenizer([table[i] for i in items], add_special_tokens=False)["input_ids"]
    unk = tokenizer.unk_token_id
    for item, toks in zip(items, encoded, strict=True):
        if not toks or (unk is not None and unk in toks):
            raise ValueError(
                f"item {item!r}: textual ID {table[item]!r} tokenises to {toks} (empty or <unk>)"
            )
    return dict(zip(items, encoded, strict=True))


# ---------------------------------------------------------------------- collation
def _with_word_boundary(ids: Sequence[int], pos: list[int], toks: Sequence[int]) -> list[int]:
    """Include a stand-alone word-boundary piece ("▁") that starts the ID's own tokenisation.

    SentencePiece may emit "▁" as its own token before a word it cannot merge with it; its character offset
    is the space *before* the ID, so a span-based mapping leaves it out, yet it is the ID's first token (and
    the generator's first decoding step). Taken only when the token right before the span is exactly that
    first token, so the alignment stays exact (and is verified by the caller).
    """
    if (
        len(pos) == len(toks) - 1
        and pos
        and pos[0] > 0
        and ids[pos[0] - 1] == toks[0]
        and ids[pos[0]] == toks[1]
    ):
        return [pos[0] - 1, *pos]
    return pos


class IDGenRecCollator:
    """Sample dicts -> tensors for one mode (``rec`` | ``id`` | ``eval``) under one fixed ID table.

    ``epoch`` is a callable returning the loader's current epoch, so a training template is a pure function
    of (seed, epoch, sample) — the same on every rank and after a resume.
    """

    MODES = ("rec", "id", "eval")

    def __init__(
        self,
        mode: str,
        tokenizer: Any,
        builder: PromptBuilder,
        tokens: Mapping[str, list[int]],
        version: str,
        texts: Mapping[str, str] | None = None,
        cfg: CollateConfig | None = None,
        epoch: Callable[[], int] = lambda: 0,
        decoder_start: int = 0,
    ) -> None:
        if mode not in self.MODES:
            raise ValueError(f"collate mode must be one of {self.MODES}, got {mode!r}")
        if mode == "id" and texts is None:
            raise ValueError("the 'id' mode needs the item texts (the ID generator's input)")
        self.mode, self.tokenizer, self.builder, self.tokens = mode, tokenizer, builder, tokens
        self.version, self.texts, self.cfg, self.epoch = version, texts, cfg or CollateConfig(), epoch
        self.pad, self.eos, self.start = tokenizer.pad_token_id, tokenizer.eos_token_id, decoder_start

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        train, epoch = self.mode != "eval", self.epoch()
        inputs, labels, positions = [], [], []
        for s in samples:
            prompt, _ = self.builder.build(s, train=train, epoch=epoch)
            ids, pos = token_positions(self.tokenizer, prompt)
            inputs.append(ids)
            positions.append(pos)
            labels.append([IGNORE_INDEX] if s.get("_pad") else [*self.tokens[s["target"]], self.eos])
        input_ids = pad_right(inputs, self.pad)
        batch = {
            "input_ids": input_ids,
            "attention_mask": (
                torch.arange(input_ids.shape[1]) < torch.tensor([len(r) for r in inputs])[:, None]
            ).long(),
            "labels": pad_right(labels, IGNORE_INDEX),
            "real": torch.tensor([not s.get("_pad") for s in samples]),
        }
        if self.mode == "id":
            batch.update(self._soft_inputs(samples, inputs, positions))
        return batch

    def prompt_cost(self, sample: Mapping[str, Any]) -> int:
        """Approximate prompt length in tokens (ID tokens + one separator per history item): the sort key of
        length bucketing. The template's own words vary by a few tokens and are left out."""
        history = sample["history"][-self.builder.cfg.max_history :]
        return sum(len(self.tokens[i]) + 1 for i in history)

    def _soft_inputs(
        self, samples: list[dict[str, Any]], inputs: list[list[int]], positions: list[list[list[int]]]
    ) -> dict[str, torch.Tensor]:
        """Distinct history items (generator inputs) and the (row, position) <- (item, step) map."""
        distinct: dict[str, int] = {}
        index, item_step = [], []
        for row, (s, ids, pos) in enumerate(zip(samples, inputs, positions, strict=True)):
            history = s["history"][-self.builder.cfg.max_history :]
            for item, item_pos in zip(history, pos, strict=True):
                toks = self.tokens[item]
                item_pos = _with_word_boundary(ids, item_pos, toks)
                if self.cfg.check_positions and [ids[p] for p in item_pos] != toks:
                    raise ValueError(
                        f"sample {s.get('__key__', row)}: prompt tokens {[ids[p] for p in item_pos]} at "
                        f"{item_pos} differ from item {item!r}'s ID tokens {toks}; soft IDs would be misplaced"
                    )
                u = distinct.setdefault(item, len(distinct))
                index.extend([row, p] for p in item_pos)
                item_step.extend([u, j] for j in range(len(item_pos)))
        items = list(distinct)
        enc = self.tokenizer(
            [self.texts[i] for i in items],
            max_length=self.cfg.max_source_len,
            truncation=True,
            padding=True,
            return_tensors="pt",
        )
        # Teacher forcing on the item's current ID: decoder input = [start, d1 .. d_{n-1}], so the logits
        # of step j are p(d_{j+1} | d_<=j, text); the eos step is not needed (eos is not in the prompt).
        dec = [[self.start, *self.tokens[i][:-1]] for i in items]
        return {
            "gen_input_ids": enc["input_ids"],
            "gen_attention_mask": enc["attention_mask"],
            "gen_decoder_input_ids": pad_right(dec, self.pad),
            "soft_index": torch.tensor(index, dtype=torch.long).reshape(-1, 2),
            "soft_item_step": torch.tensor(item_step, dtype=torch.long).reshape(-1, 2),
        }


# ---------------------------------------------------------------------- warm-up data (text -> ID)
class ItemBatches:
    """Rank-sharded, resumable micro-batches of (item text -> current textual ID) for the warm-up phase.

    Each epoch is a seeded permutation of the items; rank r takes positions r, r+R, ...; the tail is padded
    with copies marked ``real=False`` (labels all -100) so that every rank yields the same number of full
    batches and every item is seen exactly once per epoch.
    """

    def __init__(
        self,
        items: Sequence[str],
        make_batch: Callable[[list[str], list[bool]], dict[str, torch.Tensor]],
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        if not items or batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"ItemBatches: {len(items)} items, batch_size={batch_size}, rank={rank}/{world_size}"
            )
        self.items, self.make_batch = list(items), make_batch
        self.batch, self.rank, self.world, self.seed = batch_size, rank, world_size, seed
        self.batches_per_epoch = -(-len(self.items) // (batch_size * world_size))
        self.epoch, self.cursor = 0, 0

    def __len__(self) -> int:
        return self.batches_per_epoch - self.cursor

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        mine = [
            self.items[int(i)] for i in torch.randperm(len(self.items), generator=g)[self.rank :: self.world]
        ]
        while self.cursor < self.batches_per_epoch:
            chunk = mine[self.cursor * self.batch : (self.cursor + 1) * self.batch]
            real = [True] * len(chunk) + [False] * (self.batch - len(chunk))
            chunk = chunk + [mine[0] if mine else self.items[0]] * (self.batch - len(chunk))
            self.cursor += 1  # counts handed-out batches (the checkpoint's notion of progress)
            yield self.make_batch(chunk, real)
        self.epoch, self.cursor = self.epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.cursor = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "world": self.world}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if (state.get("seed"), state.get("world")) != (self.seed, self.world):
            raise ValueError(
                f"warm-up loader state {dict(state)} is for another seed/world than {self.seed}/{self.world}"
            )
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])


def text_to_id_batch(
    tokenizer: Any, texts: Mapping[str, str], tokens: Mapping[str, list[int]], max_source_len: int
) -> Callable[[list[str], list[bool]], dict[str, torch.Tensor]]:
    """Collate for the warm-up: encoder = item text, labels = ID tokens + eos (-100 padded / masked)."""
    eos = tokenizer.eos_token_id

    def make(items: list[str], real: list[bool]) -> dict[str, torch.Tensor]:
        enc = tokenizer(
            [texts[i] for i in items],
            max_length=max_source_len,
            truncation=True,
            padding=True,
            return_tensors="pt",
        )
        labels = [[*tokens[i], eos] if r else [IGNORE_INDEX] for i, r in zip(items, real, strict=True)]
        return {
            "gen_input_ids": enc["input_ids"],
            "gen_attention_mask": enc["attention_mask"],
            "labels": pad_right(labels, IGNORE_INDEX),
            "real": torch.tensor(real),
        }

    return make
