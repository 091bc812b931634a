"""Preprocessing of one dataset: dedupe, iterative k-core, stable time sort, item text, statistics, splits.

Every stage is vectorised over whole columns (pyarrow dictionary codes + numpy group counts): on the
Fusion scale (~3M interactions) each stage takes well under a second in one process, so the Ray Data
stage is kept for the part that dominates, serialising samples into shards (see bench/prepare.py and
docs/scaling.md for the measurements behind this split).

Policies (documented, tested), resolved per dataset by `DataConfig.policy` (config.DatasetPolicy):
- duplicates (`dedupe`, default on for the raw formats, off for p5): rows with the same (user, item) keep
  the first one in (timestamp, input order); exact duplicates (same timestamp) and repeats (later
  timestamp) are counted separately. Off: repeat interactions are kept (the P5/IDGenRec files are the
  papers' sets with repeats kept) and counted in the manifest as `repeat_interactions`.
- k-core (`kcore`, default data.kcore for the raw formats, 0 = off for p5, whose files are already the
  papers' 5-core sets): users and items with fewer than `kcore` interactions are removed together, round
  after round, until a fixed point (the k-core is unique, so the removal order does not change the result).
- users with < 3 items after filtering cannot form leave-one-out splits: skipped and counted (or an
  error, `short_users="error"`). With the default kcore=5 this never happens.
- items referenced without any text: an error naming the items (default) or, with `missing_text="id"`,
  the text becomes `item: <raw id>` (counted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .config import DataConfig, DatasetPolicy
from .errors import DataError
from .records import RawDataset

SEQUENCE_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("item_ids", pa.list_(pa.string())), ("timestamps", pa.list_(pa.int64()))]
)
SPLIT_TRAIN, SPLIT_VALID, SPLIT_TEST = 0, 1, 2
MIN_USER_ITEMS = 3  # leave-one-out needs >= 1 train target, a valid and a test target


@dataclass
class DatasetStats:
    users: int
    items: int
    interactions: int

    @property
    def density(self) -> float:
        return self.interactions / (self.users * self.items) if self.users and self.items else 0.0

    def as_dict(self) -> dict:
        return {
            "users": self.users,
            "items": self.items,
            "interactions": self.interactions,
            "density": self.density,
        }


@dataclass
class ProcessedDataset:
    """One dataset after preprocessing: per-user time-ordered sequences and the items they reference."""

    name: str
    sequences: pa.Table  # SEQUENCE_SCHEMA, one row per user
    items: pa.Table  # item_id, text, + the raw metadata fields; exactly the items in `sequences`
    source_files: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count, reported in the manifest
    kcore_rounds: int = 0
    namespaced: bool = False
    policy: DatasetPolicy | None = None  # what preprocessing did (None: built without a dataset spec)

    def lengths(self) -> np.ndarray:
        return pc.list_value_length(self.sequences["item_ids"]).to_numpy(zero_copy_only=False)

    def stats(self) -> DatasetStats:
        return DatasetStats(
            users=self.sequences.num_rows, items=self.items.num_rows, interactions=int(self.lengths().sum())
        )

    def split_counts(self) -> dict[str, int]:
        return split_counts(self.lengths())

    def repeat_interactions(self) -> int:
        """Interactions whose (user, item) pair occurred earlier in the user's sequence (0 after dedupe)."""
        lengths = self.lengths()
        if not lengths.sum():
            return 0
        items, _ = _codes(pc.list_flatten(self.sequences["item_ids"]))
        user = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
        pairs = user * (int(items.max()) + 1) + items
        return int(len(pairs) - len(np.unique(pairs)))


def _codes(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Dense int codes in order of first appearance, and the dictionary they index."""
    enc = pc.dictionary_encode(column)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks() if enc.num_chunks != 1 else enc.chunk(0)
        if isinstance(enc, pa.ChunkedArray):  # pragma: no cover - combine_chunks of a dict array
            enc = enc.chunk(0)
    # Null ids would become code -1; readers guarantee non-null ids, so this is an invariant.
    assert enc.indices.null_count == 0, "null user/item id reached preprocessing"
    return enc.indices.to_numpy().astype(np.int64), enc.dictionary


def dedupe(interactions: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    """Keep the first interaction of every (user, item) pair in (timestamp, input order); count the rest."""
    if interactions.num_rows == 0:
        return interactions, {"duplicate_exact": 0, "duplicate_repeat": 0}
    u, _ = _codes(interactions["user_id"])
    i, _ = _codes(interactions["item_id"])
    ts = interactions["timestamp"].to_numpy()
    order = np.lexsort((np.arange(len(u)), ts, i, u))
    us, is_, tss = u[order], i[order], ts[order]
    same_pair = (us[1:] == us[:-1]) & (is_[1:] == is_[:-1])
    exact = int(np.count_nonzero(same_pair & (tss[1:] == tss[:-1])))
    keep = np.empty(len(u), dtype=bool)
    keep[order] = np.concatenate([[True], ~same_pair])
    counts = {"duplicate_exact": exact, "duplicate_repeat": int(np.count_nonzero(same_pair)) - exact}
    return interactions.filter(pa.array(keep)), counts


def kcore(interactions: pa.Table, k: int) -> tuple[pa.Table, int]:
    """Iterative k-core on users and items until a fixed point; returns the table and the number of rounds
    that removed something."""
    u, _ = _codes(interactions["user_id"])
    i, _ = _codes(interactions["item_id"])
    alive = np.ones(len(u), dtype=bool)
    rounds = 0
    while True:
        ucount = np.bincount(u[alive], minlength=u.max(initial=-1) + 1)
        icount = np.bincount(i[alive], minlength=i.max(initial=-1) + 1)
        new_alive = alive & (ucount[u] >= k) & (icount[i] >= k)
        if np.array_equal(new_alive, alive):
            break
        alive, rounds = new_alive, rounds + 1
    return interactions.filter(pa.array(alive)), rounds


def drop_short_users(
    interactions: pa.Table, name: str, policy: str, source: str | None
) -> tuple[pa.Table, int]:
    """Remove users with fewer than 3 interactions (leave-one-out impossible), or raise with policy="error"."""
    u, users = _codes(interactions["user_id"])
    counts = np.bincount(u, minlength=len(users))
    short = np.flatnonzero(counts < MIN_USER_ITEMS)
    if len(short) == 0:
        return interactions, 0
    if policy == "error":
        examples = ", ".join(f"{users[j].as_py()} ({counts[j]} items)" for j in short[:5])
        raise DataError(
            source,
            None,
            f"dataset {name!r}: {len(short)} user(s) have < {MIN_USER_ITEMS} items after filtering, "
            f"leave-one-out impossible: {examples} (set data.short_users='skip' to drop them)",
        )
    keep = counts[u] >= MIN_USER_ITEMS
    return interactions.filter(pa.array(keep)), len(short)


def build_sequences(interactions: pa.Table) -> pa.Table:
    """One row per user (order of first appearance), items stably sorted by time (ties keep input order)."""
    u, users = _codes(interactions["user_id"])
    ts = interactions["timestamp"].to_numpy()
    order = np.lexsort((np.arange(len(u)), ts, u))
    offsets = np.zeros(len(users) + 1, dtype=np.int32)
    np.cumsum(np.bincount(u, minlength=len(users)), out=offsets[1:])
    idx = pa.array(order)
    item_ids = pa.ListArray.from_arrays(pa.array(offsets), interactions["item_id"].take(idx).combine_chunks())
    stamps = pa.ListArray.from_arrays(pa.array(offsets), interactions["timestamp"].take(idx).combine_chunks())
    return pa.Table.from_arrays([users.cast(pa.string()), item_ids, stamps], schema=SEQUENCE_SCHEMA)


def _labelled(label: str, values: pa.Array) -> pa.Array:
    """`label: value`, or null when the value is null/blank (empty fields are dropped from the text)."""
    values = pc.utf8_trim_whitespace(values)
    values = pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)
    return pc.binary_join_element_wise(pa.scalar(f"{label}: "), values, "")


def render_item_text(items: pa.Table, max_chars: int) -> pa.Array:
    """`title: ...; brand: ...; categories: a, b; description: ...; price: ...`, empty fields dropped,
    cut to `max_chars`. A pre-rendered `text` (P5 format) wins over the fields. Null when nothing is known."""
    cats = pc.binary_join(items["categories"].combine_chunks(), ", ")
    price = pc.cast(pc.round(items["price"].combine_chunks(), 2), pa.string())
    parts = [
        _labelled("title", items["title"].combine_chunks()),
        _labelled("brand", items["brand"].combine_chunks()),
        _labelled("categories", cats),
        _labelled("description", items["description"].combine_chunks()),
        _labelled("price", price),
    ]
    # binary_join_element_wise(null_handling="skip") drops rows whose fields are all null (pyarrow 26),
    # so each present field carries its own "; " and the final one is cut off.
    segments = [pc.fill_null(pc.binary_join_element_wise(p, pa.scalar("; "), ""), "") for p in parts]
    rendered = pc.replace_substring_regex(pc.binary_join_element_wise(*segments, ""), r"; $", "")
    given = pc.utf8_trim_whitespace(items["text"].combine_chunks())
    text = pc.if_else(pc.greater(pc.utf8_length(pc.fill_null(given, "")), 0), given, rendered)
    text = pc.utf8_rtrim_whitespace(pc.utf8_slice_codeunits(text, 0, max_chars))
    return pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)


def select_items(raw_items: pa.Table, referenced: pa.Array, cfg: DataConfig, name: str, source: str | None):
    """The items table restricted to `referenced` ids (sorted by id), with rendered text.

    Returns (table, skipped counts). Items without text follow `cfg.missing_text`.
    """
    skipped: dict[str, int] = {}
    codes, ids = _codes(raw_items["item_id"])
    if len(ids) < raw_items.num_rows:  # the same item described twice: the first description wins
        first = np.zeros(raw_items.num_rows, dtype=bool)
        first[np.unique(codes, return_index=True)[1]] = True
        skipped["duplicate_item_meta"] = raw_items.num_rows - len(ids)
        raw_items = raw_items.filter(pa.array(first))
    referenced = pc.unique(referenced)
    pos = pc.index_in(referenced, value_set=raw_items["item_id"].combine_chunks())
    known = raw_items.take(pc.drop_null(pos))
    missing = referenced.filter(pc.is_null(pos))
    unknown_meta = pa.table(
        {c: pa.nulls(len(missing), raw_items.schema.field(c).type) for c in raw_items.column_names}
    )
    unknown_meta = unknown_meta.set_column(0, "item_id", missing)
    table = pa.concat_tables([known, unknown_meta])
    text = render_item_text(table, cfg.item_text_max_chars)
    no_text = pc.is_null(text)
    n_missing = pc.sum(no_text.cast(pa.int64())).as_py() or 0
    if n_missing:
        ids = table["item_id"].filter(no_text).to_pylist()
        if cfg.missing_text == "error":
            raise DataError(
                source,
                None,
                f"dataset {name!r}: {n_missing} referenced item(s) have no text (no metadata or all fields "
                f"empty), e.g. {ids[:5]} (set data.missing_text='id' to use the id as text)",
            )
        fallback = pc.binary_join_element_wise(pa.scalar("item: "), table["item_id"], "")
        text = pc.if_else(no_text, fallback, text)
        skipped["item_text_from_id"] = n_missing
    table = table.drop_columns(["text"]).append_column("text", text)
    cols = ["item_id", "text"] + [c for c in table.column_names if c not in ("item_id", "text")]
    table = table.select(cols)
    return table.take(pc.sort_indices(table, [("item_id", "ascending")])), skipped


def preprocess(raw: RawDataset, cfg: DataConfig, policy: DatasetPolicy | None = None) -> ProcessedDataset:
    """Raw interactions + metadata -> (deduplicated, k-core) sequences, item text and counted skips.

    `policy` is the dataset's resolved policy (`cfg.policy(spec)`); without one, the raw-format defaults
    apply (dedupe, data.kcore).
    """
    do_dedupe, core = (True, cfg.kcore) if policy is None else (policy.dedupe, policy.kcore)
    source = raw.source_files[0] if raw.source_files else None
    skipped = {f"reader:{k}": v for k, v in raw.skipped.items()}
    table = raw.interactions
    if do_dedupe:
        table, dup = dedupe(table)
        skipped.update(dup)
    rounds = 0
    if core > 0:
        before = table.num_rows
        table, rounds = kcore(table, core)
        skipped["kcore_interactions"] = before - table.num_rows
    table, short = drop_short_users(table, raw.name, cfg.short_users, source)
    skipped["short_user"] = short
    if table.num_rows == 0:
        after = f"{core}-core filtering" if core > 0 else "filtering"
        raise DataError(source, None, f"dataset {raw.name!r}: no interactions left after {after}")
    sequences = build_sequences(table)
    items, item_skips = select_items(raw.items, table["item_id"].combine_chunks(), cfg, raw.name, source)
    skipped.update(item_skips)
    return ProcessedDataset(
        name=raw.name,
        sequences=sequences,
        items=items,
        source_files=list(raw.source_files),
        skipped={k: v for k, v in skipped.items() if v},
        kcore_rounds=rounds,
        policy=policy,
    )


def split_counts(lengths: np.ndarray) -> dict[str, int]:
    """Samples per split for users of these lengths: train n-3 each, one valid and one test each."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return {"train": int((lengths - 3).sum()), "valid": len(lengths), "test": len(lengths)}


def sample_positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leave-one-out samples as (user index, target position, split code), users in order.

    For a user with n items: train targets at positions 1..n-3, valid at n-2, test at n-1; the history of
    a target at position t is items[:t] (capped by the writer to the last max_history items).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    assert (lengths >= MIN_USER_ITEMS).all(), "users with < 3 items must be filtered before sampling"
    per_user = lengths - 1
    user = np.repeat(np.arange(len(lengths)), per_user)
    starts = np.repeat(np.cumsum(per_user) - per_user, per_user)
    pos = np.arange(len(user)) - starts + 1
    n = lengths[user]
    split = np.where(pos <= n - 3, SPLIT_TRAIN, np.where(pos == n - 2, SPLIT_VALID, SPLIT_TEST)).astype(
        np.int8
    )
    return user, pos, split


def leave_one_out(items: list[str], max_history: int) -> list[tuple[str, list[str], str]]:
    """Reference (pure Python) splits of one user's time-ordered items: [(split, history, target)]."""
    n = len(items)
    out = [("train", items[max(0, t - max_history) : t], items[t]) for t in range(1, n - 2)]
    out.append(("valid", items[max(0, n - 2 - max_history) : n - 2], items[n - 2]))
    out.append(("test", items[max(0, n - 1 - max_history) : n - 1], items[n - 1]))
    return out
