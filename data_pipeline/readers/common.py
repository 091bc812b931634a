"""What the per-format readers share: line streaming (plain or gzip), strict field parsing that raises
`DataError` at `path:line`, the pyarrow JSON fast path with its stream checks, and the column builders
that assemble a `RawDataset`. The error and skip policy is described in the package docstring (__init__.py).
"""

from __future__ import annotations

import ast
import codecs
import gzip
import io
import json
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from ..errors import DataError
from ..records import INTERACTION_SCHEMA, ITEM_SCHEMA, RawDataset


# ----------------------------------------------------------------------------------------------- streaming
def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, raw bytes without the newline) of a plain or gzip file.

    Corrupt/truncated gzip surfaces as EOFError/BadGzipFile/zlib.error mid-iteration; it becomes a DataError
    naming the last line that was read completely, so a user knows how much of the file is intact.
    An empty file (no bytes at all) is an error: a dataset file is never legitimately empty.
    """
    path = Path(path)
    lineno = 0
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for raw in f:
                lineno += 1
                yield lineno, raw.rstrip(b"\r\n")
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(
            path, lineno, f"truncated or corrupt gzip stream; last good line is {lineno} ({e})"
        ) from e
    if lineno == 0:
        raise DataError(path, None, "empty file")


def _decode_utf8(raw: bytes, path: Path, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            path, lineno, f"invalid UTF-8 at byte {e.start}: {raw[e.start : e.start + 4]!r}"
        ) from e


def _parse_json(raw: bytes, path: Path, lineno: int) -> dict[str, Any]:
    text = _decode_utf8(raw, path, lineno)
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, lineno, f"malformed JSON: {e.msg} at column {e.colno}") from e
    if not isinstance(rec, dict):
        raise DataError(path, lineno, f"expected a JSON object, got {type(rec).__name__}")
    return rec


def _parse_dict_literal(raw: bytes, path: Path, lineno: int) -> dict[str, Any]:
    """Amazon-2014 meta lines are `str(dict)` output; `ast.literal_eval` parses them without executing code."""
    text = _decode_utf8(raw, path, lineno)
    try:
        rec = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        raise DataError(path, lineno, f"not a Python dict literal: {type(e).__name__}: {e}") from e
    if not isinstance(rec, dict):
        raise DataError(path, lineno, f"expected a dict literal, got {type(rec).__name__}")
    return rec


def _field(rec: dict[str, Any], key: str, path: Path, lineno: int) -> Any:
    try:
        value = rec[key]
    except KeyError:
        raise DataError(path, lineno, f"missing required field '{key}'") from None
    if value is None:
        raise DataError(path, lineno, f"required field '{key}' is null")
    return value


def _id_field(rec: dict[str, Any], key: str, path: Path, lineno: int) -> str:
    value = _field(rec, key, path, lineno)
    if not isinstance(value, str | int) or isinstance(value, bool) or value == "":
        raise DataError(path, lineno, f"field '{key}' must be a non-empty id, got {value!r}")
    return str(value)


def _int_field(rec: dict[str, Any], key: str, path: Path, lineno: int) -> int:
    value = _field(rec, key, path, lineno)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(path, lineno, f"field '{key}' must be an integer, got {value!r}")
    return value


def _opt_float(rec: dict[str, Any], key: str, path: Path, lineno: int) -> float | None:
    value = rec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise DataError(path, lineno, f"field '{key}' must be a number, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise DataError(path, lineno, f"field '{key}' must be a number, got {value!r}") from None


def _opt_str(rec: dict[str, Any], key: str, path: Path, lineno: int) -> str | None:
    value = rec.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise DataError(path, lineno, f"field '{key}' must be a string, got {value!r}")
    return value


class _CheckedStream(io.RawIOBase):
    """A readable stream over a (gzip) file for pyarrow: counts newlines and checks UTF-8 as blocks pass.

    pyarrow neither reports blank lines nor validates bytes in fields outside the schema; checking the
    whole stream here keeps the fast path exactly as strict as the line-by-line one.
    """

    def __init__(self, f: io.BufferedIOBase) -> None:
        self.f, self.newlines, self.last = f, 0, b"\n"
        self.utf8 = codecs.getincrementaldecoder("utf-8")()

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        data = self.f.read(len(buf))
        buf[: len(data)] = data
        self.utf8.decode(data, final=not data)  # raises UnicodeDecodeError -> the careful pass locates it
        if data:
            self.newlines += data.count(b"\n")
            self.last = data[-1:]
        return len(data)


def _fast_json(path: Path, schema: pa.Schema, required: list[str]) -> tuple[pa.Table, int] | None:
    """(table, blank lines) from pyarrow's C++ JSON reader, or None when the careful pass must decide.

    pyarrow does not say which line is bad and skips blank lines silently, so any failure, any null or
    empty required value, or an empty result returns None and the caller re-reads the file line by line:
    that pass is the specification (it raises the precise DataError or accepts what pyarrow refused, e.g.
    numeric ids). Blank lines = newlines seen - rows parsed.
    """
    opts = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            counter = _CheckedStream(f)
            table = pajson.read_json(
                counter, read_options=pajson.ReadOptions(use_threads=False), parse_options=opts
            )
    except (pa.ArrowException, OSError, EOFError, zlib.error, ValueError):
        return None
    for name in required:
        col = table[name]
        if col.null_count or (
            pa.types.is_string(col.type) and pc.any(pc.equal(pc.utf8_length(col), 0)).as_py()
        ):
            return None
    if table.num_rows == 0:
        return None
    lines = counter.newlines + (counter.last != b"\n")
    return table, lines - table.num_rows


# ------------------------------------------------------------------------------------------- column builders
class _Interactions:
    """Column lists for INTERACTION_SCHEMA; one pyarrow conversion at the end."""

    def __init__(self) -> None:
        self.users: list[str] = []
        self.items: list[str] = []
        self.times: list[int] = []
        self.ratings: list[float | None] = []

    def add(self, user: str, item: str, ts: int, rating: float | None) -> None:
        self.users.append(user)
        self.items.append(item)
        self.times.append(ts)
        self.ratings.append(rating)

    def table(self) -> pa.Table:
        cols = [self.users, self.items, self.times, self.ratings]
        return pa.Table.from_arrays(
            [pa.array(c, f.type) for c, f in zip(cols, INTERACTION_SCHEMA, strict=True)],
            schema=INTERACTION_SCHEMA,
        )


def _items_table(item_ids: list[str], meta: dict[str, tuple], text: dict[str, str] | None = None) -> pa.Table:
    """Items in `item_ids` order; `meta[id] = (title, brand, categories, description, price)`."""
    empty = (None, None, [], None, None)
    rows = [meta.get(i, empty) for i in item_ids]
    cols: list[list[Any]] = [item_ids] + [[r[k] for r in rows] for k in range(5)]
    cols.append([text.get(i) for i in item_ids] if text is not None else [None] * len(item_ids))
    arrays = [pa.array(c, f.type) for c, f in zip(cols, ITEM_SCHEMA, strict=True)]
    return pa.Table.from_arrays(arrays, schema=ITEM_SCHEMA)


def _unique_in_order(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _dataset(
    name: str,
    interactions: pa.Table,
    meta: dict[str, tuple],
    files: list[Path],
    skipped: Counter,
    text: dict[str, str] | None = None,
    item_ids: list[str] | None = None,
) -> RawDataset:
    """Assemble the RawDataset; items default to the interacted ones in order of first appearance."""
    if item_ids is None:
        item_ids = pc.unique(interactions["item_id"]).to_pylist()  # Arrow keeps first-appearance order
        missing = sum(1 for i in item_ids if i not in meta)
        if missing:
            skipped["items_without_meta"] += missing
    return RawDataset(
        name=name,
        interactions=interactions,
        items=_items_table(item_ids, meta, text),
        source_files=[str(Path(f).resolve()) for f in files],
        skipped={k: v for k, v in sorted(skipped.items()) if v},
    )


def _existing(input_dir: Path, filename: str) -> Path:
    for cand in (input_dir / filename, input_dir / f"{filename}.gz"):
        if cand.exists():
            return cand
    raise DataError(input_dir / filename, None, "file not found")
