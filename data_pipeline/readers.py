"""Readers for the raw public formats; each returns a `RawDataset` (see records.py) before any filtering.

Formats: Amazon review 2014 (`reviews_<Cat>_5.json.gz` or `ratings_<Cat>.csv`, plus `meta_<Cat>.json.gz`
whose lines are Python dict literals), the Yelp academic dataset, MovieLens-1M and the P5/IDGenRec text
format (`user_sequence.txt` + `item_plain_text.txt`).

Error policy. Structural problems raise `DataError` reading `path:line: message`: malformed JSON or dict
literal, a record that is not an object, a missing required field (named), a field of the wrong type
(field and value named), invalid UTF-8 where UTF-8 is required, an empty file, a truncated or corrupt gzip
stream (the message names the last good line), an unknown item id in a P5 sequence, duplicate ids in an
item or user list. Nothing is dropped silently; these non-fatal cases are kept or skipped and counted in
`RawDataset.skipped`:
- `blank_lines`: empty lines between records are skipped.
- `items_without_meta`: an item that has interactions but no metadata line is KEPT with empty fields.
- `meta_items_without_interactions`: a metadata line for an item nobody interacted with is skipped (the
  real meta files list every product of a category; only interacted items matter downstream). For Amazon
  such lines are recognised by a cheap `'asin'` match and are never `literal_eval`-ed, which is what makes
  multi-million-line meta files fast to read.
- `duplicate_meta`: a second metadata line for the same item; the first one wins.
- `users_without_items`: a P5 line holding a user id only.
Duplicate interactions are kept: deduplication is preprocessing's job, a per-dataset policy (docs/data.md).

Speed: files are streamed line by line (gzip transparently), columns are accumulated in Python lists and
turned into pyarrow tables once. The two biggest inputs take C++ fast paths: review JSON lines (millions
of lines per Amazon category, Yelp's review file) go through pyarrow's JSON reader with the few needed
columns (~3x faster; blank lines and UTF-8 are still checked on the stream), the headerless ratings CSV
through pyarrow's CSV reader. Whenever a fast path declines (any parse error, null or empty id, type
mismatch), the line-by-line pass re-reads the file: it is the specification, so it either names the exact
bad line or accepts what pyarrow refused (e.g. numeric ids). Reading the P5 Beauty files takes ~0.3 s.
"""

from __future__ import annotations

import ast
import codecs
import gzip
import io
import json
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from .errors import DataError
from .records import INTERACTION_SCHEMA, ITEM_SCHEMA, RawDataset

FORMATS = ("amazon2014", "yelp", "movielens", "p5")

_REVIEWS_RE = re.compile(r"^reviews_(?P<cat>.+)_5\.json(?:\.gz)?$")
_RATINGS_RE = re.compile(r"^ratings_(?P<cat>.+)\.csv(?:\.gz)?$")
# A meta line starts `{'asin': 'XXXX', ...` in the real files; only used to skip unwanted lines cheaply.
_META_ASIN_RE = re.compile(rb"""['"]asin['"]\s*:\s*['"]([^'"\\]+)['"]""")


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


# --------------------------------------------------------------------------------------------- Amazon 2014
def _find_category_files(input_dir: Path, category: str | None) -> tuple[str, Path, Path]:
    """(category, interactions file, meta file); the 5-core reviews file wins over the ratings CSV."""
    found: dict[str, Path] = {}
    for p in sorted(input_dir.iterdir()):
        for rx in (_RATINGS_RE, _REVIEWS_RE):  # reviews second, so it overrides ratings
            m = rx.match(p.name)
            if m:
                found[m.group("cat")] = p
    if not found:
        raise DataError(input_dir, None, "no reviews_<Category>_5.json.gz or ratings_<Category>.csv file")
    if category is None:
        if len(found) > 1:
            raise DataError(
                input_dir, None, f"several categories {sorted(found)}; pass category= to pick one"
            )
        category = next(iter(found))
    if category not in found:
        raise DataError(input_dir, None, f"category {category!r} not found; available: {sorted(found)}")
    for meta_name in (f"meta_{category}.json.gz", f"meta_{category}.json"):
        if (input_dir / meta_name).exists():
            return category, found[category], input_dir / meta_name
    raise DataError(input_dir / f"meta_{category}.json.gz", None, "metadata file not found")


_AMAZON_REVIEW_SCHEMA = pa.schema(
    [
        ("reviewerID", pa.string()),
        ("asin", pa.string()),
        ("unixReviewTime", pa.int64()),
        ("overall", pa.float32()),
    ]
)


def _read_amazon_reviews(path: Path, skipped: Counter, fast: bool = True) -> pa.Table:
    """Reviews JSON lines: pyarrow fast path (~4x faster), this line-by-line pass when it declines."""
    got = _fast_json(path, _AMAZON_REVIEW_SCHEMA, ["reviewerID", "asin", "unixReviewTime"]) if fast else None
    if got is not None:
        table, blank = got
        skipped["blank_lines"] += blank
        return pa.Table.from_arrays(table.columns, schema=INTERACTION_SCHEMA)
    inter = _Interactions()
    for lineno, raw in iter_lines(path):
        if not raw.strip():
            skipped["blank_lines"] += 1
            continue
        rec = _parse_json(raw, path, lineno)
        inter.add(
            _id_field(rec, "reviewerID", path, lineno),
            _id_field(rec, "asin", path, lineno),
            _int_field(rec, "unixReviewTime", path, lineno),
            _opt_float(rec, "overall", path, lineno),
        )
    return inter.table()


def _read_ratings_csv(path: Path) -> pa.Table:
    """Headerless `user,item,rating,timestamp`: pyarrow's C++ reader; Python only to locate a bad line."""
    opts = pacsv.ReadOptions(column_names=list(INTERACTION_SCHEMA.names[:2]) + ["rating", "timestamp"])
    types = {f.name: f.type for f in INTERACTION_SCHEMA}
    try:
        table = pacsv.read_csv(
            path, read_options=opts, convert_options=pacsv.ConvertOptions(column_types=types)
        )
    except pa.ArrowInvalid as e:
        _locate_csv_error(path)
        raise DataError(path, None, f"unreadable CSV: {e}") from e
    if table.num_rows == 0:
        raise DataError(path, None, "empty file")
    empty_id = pc.any(
        pc.or_(pc.equal(pc.utf8_length(table["user_id"]), 0), pc.equal(pc.utf8_length(table["item_id"]), 0))
    )
    if table["timestamp"].null_count or empty_id.as_py():
        _locate_csv_error(path)
    return table.select(INTERACTION_SCHEMA.names).cast(INTERACTION_SCHEMA)


def _locate_csv_error(path: Path) -> None:
    """Slow pass run only after the fast reader failed: raise a DataError at the first bad line."""
    names = ("user", "item", "rating", "timestamp")
    for lineno, raw in iter_lines(path):
        parts = _decode_utf8(raw, path, lineno).split(",")
        if len(parts) != 4:
            raise DataError(path, lineno, f"expected 4 comma-separated fields {names}, got {len(parts)}")
        for name, value, conv in zip(names, parts, (str, str, float, int), strict=True):
            try:
                ok = conv(value) != ""
            except ValueError:
                ok = False
            if not ok:
                raise DataError(path, lineno, f"field '{name}' has bad value {value!r}")


def _amazon_meta_record(rec: dict[str, Any], path: Path, lineno: int) -> tuple:
    cats: list[str] = []
    raw_cats = rec.get("categories") or []
    if not isinstance(raw_cats, list):
        raise DataError(path, lineno, f"field 'categories' must be a list of lists, got {raw_cats!r}")
    for group in raw_cats:
        group = [group] if isinstance(group, str) else group
        if not isinstance(group, list) or not all(isinstance(c, str) for c in group):
            raise DataError(
                path, lineno, f"field 'categories' must be a list of lists of strings, got {group!r}"
            )
        cats.extend(group)
    return (
        _opt_str(rec, "title", path, lineno),
        _opt_str(rec, "brand", path, lineno),
        _unique_in_order([c for c in cats if c]),
        _opt_str(rec, "description", path, lineno),
        _opt_float(rec, "price", path, lineno),
    )


def _read_amazon_meta(path: Path, wanted: set[str], skipped: Counter) -> dict[str, tuple]:
    meta: dict[str, tuple] = {}
    for lineno, raw in iter_lines(path):
        if not raw.strip():
            skipped["blank_lines"] += 1
            continue
        m = _META_ASIN_RE.search(raw)
        if m is not None and m.group(1).decode("utf-8", "replace") not in wanted:
            skipped["meta_items_without_interactions"] += 1
            continue
        rec = _parse_dict_literal(raw, path, lineno)
        asin = _id_field(rec, "asin", path, lineno)
        if asin not in wanted:
            skipped["meta_items_without_interactions"] += 1
        elif asin in meta:
            skipped["duplicate_meta"] += 1
        else:
            meta[asin] = _amazon_meta_record(rec, path, lineno)
    return meta


def read_amazon2014(
    input_dir: str | Path, category: str | None = None, name: str | None = None
) -> RawDataset:
    """Read one Amazon-2014 category: 5-core reviews JSON (or ratings CSV) + dict-literal metadata."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise DataError(input_dir, None, "not a directory")
    category, inter_path, meta_path = _find_category_files(input_dir, category)
    skipped: Counter = Counter()
    if _REVIEWS_RE.match(inter_path.name):
        table = _read_amazon_reviews(inter_path, skipped)
    else:
        table = _read_ratings_csv(inter_path)
    if table.num_rows == 0:
        raise DataError(inter_path, None, "no interactions (only blank lines)")
    meta = _read_amazon_meta(meta_path, set(pc.unique(table["item_id"]).to_pylist()), skipped)
    return _dataset(name or category.lower(), table, meta, [inter_path, meta_path], skipped)


# ---------------------------------------------------------------------------------------------------- Yelp
def _yelp_time(rec: dict[str, Any], path: Path, lineno: int) -> int:
    """`date` "YYYY-MM-DD HH:MM:SS" (older dumps: "YYYY-MM-DD") is UTC wall time -> unix seconds."""
    value = _field(rec, "date", path, lineno)
    try:
        when = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise DataError(path, lineno, f"field 'date' must be 'YYYY-MM-DD HH:MM:SS', got {value!r}") from None
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp())


def _yelp_business(rec: dict[str, Any], path: Path, lineno: int) -> tuple:
    cats = rec.get("categories")
    if cats is not None and not isinstance(cats, str):
        raise DataError(path, lineno, f"field 'categories' must be a comma-separated string, got {cats!r}")
    categories = _unique_in_order([c.strip() for c in (cats or "").split(",") if c.strip()])
    # Yelp has no brand or description; the location is the most useful remaining text for an item ID.
    place = ", ".join(
        x for x in (_opt_str(rec, "city", path, lineno), _opt_str(rec, "state", path, lineno)) if x
    )
    return (_opt_str(rec, "name", path, lineno), None, categories, place or None, None)


_YELP_REVIEW_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("business_id", pa.string()),
        ("date", pa.timestamp("s")),
        ("stars", pa.float32()),
    ]
)


def _read_yelp_reviews(path: Path, skipped: Counter, fast: bool = True) -> pa.Table:
    got = _fast_json(path, _YELP_REVIEW_SCHEMA, ["user_id", "business_id", "date"]) if fast else None
    if got is not None:  # naive timestamps are read as UTC, as in _yelp_time
        table, blank = got
        skipped["blank_lines"] += blank
        cols = [table["user_id"], table["business_id"], table["date"].cast(pa.int64()), table["stars"]]
        return pa.Table.from_arrays(cols, schema=INTERACTION_SCHEMA)
    inter = _Interactions()
    for lineno, raw in iter_lines(path):
        if not raw.strip():
            skipped["blank_lines"] += 1
            continue
        rec = _parse_json(raw, path, lineno)
        user = _id_field(rec, "user_id", path, lineno)
        item = _id_field(rec, "business_id", path, lineno)
        inter.add(user, item, _yelp_time(rec, path, lineno), _opt_float(rec, "stars", path, lineno))
    return inter.table()


def _read_yelp_business(path: Path, wanted: set[str], skipped: Counter) -> dict[str, tuple]:
    meta: dict[str, tuple] = {}
    for lineno, raw in iter_lines(path):
        if not raw.strip():
            skipped["blank_lines"] += 1
            continue
        rec = _parse_json(raw, path, lineno)
        bid = _id_field(rec, "business_id", path, lineno)
        if bid not in wanted:
            skipped["meta_items_without_interactions"] += 1
        elif bid in meta:
            skipped["duplicate_meta"] += 1
        else:
            meta[bid] = _yelp_business(rec, path, lineno)
    return meta


def read_yelp(input_dir: str | Path, name: str = "yelp") -> RawDataset:
    """Read the Yelp academic dataset (business + review JSON lines, `.json` or `.json.gz`)."""
    input_dir = Path(input_dir)
    review_path = _existing(input_dir, "yelp_academic_dataset_review.json")
    business_path = _existing(input_dir, "yelp_academic_dataset_business.json")
    skipped: Counter = Counter()
    table = _read_yelp_reviews(review_path, skipped)
    if table.num_rows == 0:
        raise DataError(review_path, None, "no interactions (only blank lines)")
    meta = _read_yelp_business(business_path, set(pc.unique(table["item_id"]).to_pylist()), skipped)
    return _dataset(name, table, meta, [review_path, business_path], skipped)


def _existing(input_dir: Path, filename: str) -> Path:
    for cand in (input_dir / filename, input_dir / f"{filename}.gz"):
        if cand.exists():
            return cand
    raise DataError(input_dir / filename, None, "file not found")


# ----------------------------------------------------------------------------------------------- MovieLens
def _dat_fields(raw: bytes, n: int, names: tuple[str, ...], path: Path, lineno: int) -> list[str]:
    parts = raw.decode("latin-1").split("::")  # MovieLens-1M is latin-1: decoding never fails
    if len(parts) != n:
        raise DataError(path, lineno, f"expected {n} '::'-separated fields {names}, got {len(parts)}")
    return parts


def _dat_int(value: str, name: str, path: Path, lineno: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(path, lineno, f"field '{name}' must be an integer, got {value!r}") from None


def read_movielens(input_dir: str | Path, name: str = "ml-1m") -> RawDataset:
    """Read MovieLens-1M `ratings.dat` (UserID::MovieID::Rating::Timestamp) + `movies.dat` (latin-1)."""
    input_dir = Path(input_dir)
    ratings_path, movies_path = _existing(input_dir, "ratings.dat"), _existing(input_dir, "movies.dat")
    inter, skipped = _Interactions(), Counter()
    names = ("UserID", "MovieID", "Rating", "Timestamp")
    for lineno, raw in iter_lines(ratings_path):
        if not raw.strip():
            skipped["blank_lines"] += 1
            continue
        user, movie, rating, ts = _dat_fields(raw, 4, names, ratings_path, lineno)
        _dat_int(user, "UserID", ratings_path, lineno)
        _dat_int(movie, "MovieID", ratings_path, lineno)
        inter.add(
            user,
            movie,
            _dat_int(ts, "Timestamp", ratings_path, lineno),
            float(_dat_int(rating, "Rating", ratings_path, lineno)),
        )
    if not inter.users:
        raise DataError(ratings_path, None, "no interactions (only blank lines)")
    wanted, meta = set(inter.items), {}
    for lineno, raw in iter_lines(movies_path):
        if not raw.strip():
            skipped["blank_lines"] += 1
            continue
        movie, title, genres = _dat_fields(raw, 3, ("MovieID", "Title", "Genres"), movies_path, lineno)
        _dat_int(movie, "MovieID", movies_path, lineno)
        if movie not in wanted:
            skipped["meta_items_without_interactions"] += 1
        elif movie in meta:
            skipped["duplicate_meta"] += 1
        else:
            meta[movie] = (title or None, None, [g for g in genres.split("|") if g], None, None)
    return _dataset(name, inter.table(), meta, [ratings_path, movies_path], skipped)


# ------------------------------------------------------------------------------------------------------ P5
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


# ------------------------------------------------------------------------------------------------ dispatch
_READERS: dict[str, Callable[..., RawDataset]] = {
    "amazon2014": read_amazon2014,
    "yelp": read_yelp,
    "movielens": read_movielens,
    "p5": read_p5,
}


def read_dataset(fmt: str, input_dir: str | Path, name: str | None = None, **kw: Any) -> RawDataset:
    """Read `input_dir` in format `fmt` (one of FORMATS); extra keywords go to the reader.

    `category=None` is accepted (and ignored) for every format, so a caller can pass a dataset spec's
    optional Amazon category through unconditionally.
    """
    if fmt not in _READERS:
        raise ValueError(f"unknown dataset format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if kw.get("category", "absent") is None:
        del kw["category"]
    if "category" in kw and fmt != "amazon2014":
        raise ValueError(f"category={kw['category']!r} only applies to format 'amazon2014', not {fmt!r}")
    if name is not None:
        kw["name"] = name
    return _READERS[fmt](input_dir, **kw)
