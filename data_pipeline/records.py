"""In-memory contract between the readers and preprocessing (see docs/ARCHITECTURE.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

INTERACTION_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("timestamp", pa.int64()),
        ("rating", pa.float32()),
    ]
)

ITEM_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("title", pa.string()),
        ("brand", pa.string()),
        ("categories", pa.list_(pa.string())),
        ("description", pa.string()),
        ("price", pa.float64()),
        # Pre-rendered plain text (the P5 format ships it); None means "render from the fields above".
        ("text", pa.string()),
    ]
)


SPLITS = ("train", "valid", "test")  # leave-one-out: items[:-2] / target items[-2] / target items[-1]


@dataclass
class RawDataset:
    """One dataset as read from its raw files, before any filtering."""

    name: str
    interactions: pa.Table  # INTERACTION_SCHEMA
    items: pa.Table  # ITEM_SCHEMA
    source_files: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count; never skip silently

    def __post_init__(self) -> None:
        if not self.interactions.schema.equals(INTERACTION_SCHEMA):
            raise ValueError(f"{self.name}: interactions schema {self.interactions.schema} != contract")
        if not self.items.schema.equals(ITEM_SCHEMA):
            raise ValueError(f"{self.name}: items schema {self.items.schema} != contract")


def read_processed(data_dir: str | Path, column: str) -> tuple[dict[str, list[str]], dict[str, str | None]]:
    """A processed dataset folder (`processed/<name>`, written by `prepare`): each user's items in time order
    and one `items.parquet` column per item (None where the item has no value)."""
    import pyarrow.parquet as pq

    d = Path(data_dir)
    for name in ("items.parquet", "sequences.parquet"):
        if not (d / name).is_file():
            raise ValueError(f"{d}: missing {name} (expected a processed dataset folder)")
    items = pq.read_table(d / "items.parquet", columns=["item_id", column]).to_pydict()
    seqs = pq.read_table(d / "sequences.parquet", columns=["user_id", "item_ids"]).to_pydict()
    values = dict(zip(items["item_id"], items[column], strict=True))
    return dict(zip(seqs["user_id"], seqs["item_ids"], strict=True)), values
