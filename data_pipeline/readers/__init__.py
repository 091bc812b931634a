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

Layout: `common.py` (streaming, field parsing, the pyarrow fast path, column builders) and one module per
format (`amazon2014.py`, `yelp.py`, `movielens.py`, `p5.py`); this module holds the format registry and
`read_dataset`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..records import RawDataset
from .amazon2014 import read_amazon2014
from .common import iter_lines
from .movielens import read_movielens
from .p5 import read_p5
from .yelp import read_yelp

__all__ = [
    "FORMATS",
    "iter_lines",
    "read_amazon2014",
    "read_dataset",
    "read_movielens",
    "read_p5",
    "read_yelp",
]

FORMATS = ("amazon2014", "yelp", "movielens", "p5")


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
