"""The Yelp academic dataset: `yelp_academic_dataset_review.json` + `..._business.json` (JSON lines)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DataError
from ..records import INTERACTION_SCHEMA, RawDataset
from .common import (
    _dataset,
    _existing,
    _fast_json,
    _field,
    _id_field,
    _Interactions,
    _opt_float,
    _opt_str,
    _parse_json,
    _unique_in_order,
    iter_lines,
)


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
