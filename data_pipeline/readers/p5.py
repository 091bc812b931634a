"""The P5/IDGenRec text format: `user_sequence.txt` + `item_plain_text.txt`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..errors import DataError
from ..records import RawDataset
from .common import _dataset, _decode_utf8, _existing, _Interactions, iter_lines

_P5_KEYS = ("title", "brand", "categories", "description", "price")


def _p5_fields(text: str) -> dict[str, str]:
    """`key: value; key: value` -> dict; a segment without `key: ` belongs to the previous value."""
    fields: dict[str, str] = {}
    last = None
    for seg in text.split("; "):
        key, sep, value = seg.partition(": ")
        if sep and key.strip() and " " not in key.strip():
            last = key.strip().lower()
            fields[last] = value.strip()
        elif last is not None:
            fields[last] += "; " + seg
    return fields


def _p5_item(text: str) -> tuple:
    f = _p5_fields(text)
    try:
        price = float(f["price"]) if f.get("price") else None
    except ValueError:
        price = None  # P5 text is free-form; an unparsable price stays in `text`
    cats = [c.strip() for c in f.get("categories", "").split(",") if c.strip()]
    return (f.get("title") or None, f.get("brand") or None, cats, f.get("description") or None, price)


def _read_p5_items(path: Path, skipped: Counter) -> tuple[list[str], dict[str, tuple], dict[str, str]]:
    ids: list[str] = []
    meta: dict[str, tuple] = {}
    text: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for lineno, raw in iter_lines(path):
        line = _decode_utf8(raw, path, lineno)
        if not line.strip():
            skipped["blank_lines"] += 1
            continue
        item, _, rest = line.strip().partition(" ")
        if item in first_line:
            raise DataError(path, lineno, f"duplicate item id {item!r} (first at line {first_line[item]})")
        first_line[item] = lineno
        ids.append(item)
        text[item] = rest.strip() or None
        meta[item] = _p5_item(rest)
    if not ids:
        raise DataError(path, None, "no items (only blank lines)")
    return ids, meta, text


def _read_p5_sequences(path: Path, known: dict[str, tuple], inter: _Interactions, skipped: Counter) -> None:
    seen_users: dict[str, int] = {}
    for lineno, raw in iter_lines(path):
        parts = _decode_utf8(raw, path, lineno).split()
        if not parts:
            skipped["blank_lines"] += 1
            continue
        user, items = parts[0], parts[1:]
        if user in seen_users:
            raise DataError(path, lineno, f"duplicate user id {user!r} (first at line {seen_users[user]})")
        seen_users[user] = lineno
        if not items:
            skipped["users_without_items"] += 1
            continue
        for item in items:
            if item not in known:
                raise DataError(path, lineno, f"unknown item id {item!r} (no line in item_plain_text.txt)")
        n = len(items)
        inter.users.extend([user] * n)
        inter.items.extend(items)
        inter.times.extend(range(n))  # no timestamps in P5: the position keeps the order under a stable sort
        inter.ratings.extend([None] * n)


def read_p5(input_dir: str | Path, name: str | None = None) -> RawDataset:
    """Read the P5/IDGenRec format; all items of item_plain_text.txt are kept, in file order."""
    input_dir = Path(input_dir)
    items_path = _existing(input_dir, "item_plain_text.txt")
    seq_path = _existing(input_dir, "user_sequence.txt")
    skipped: Counter = Counter()
    ids, meta, text = _read_p5_items(items_path, skipped)
    inter = _Interactions()
    _read_p5_sequences(seq_path, meta, inter, skipped)
    if not inter.users:
        raise DataError(seq_path, None, "no interactions")
    return _dataset(
        name or input_dir.name, inter.table(), meta, [seq_path, items_path], skipped, text=text, item_ids=ids
    )
