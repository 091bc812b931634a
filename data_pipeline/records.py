"""In-memory contract between the readers and preprocessing (see docs/ARCHITECTURE.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

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
