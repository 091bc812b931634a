"""Typed configuration of the data side: which datasets, how they are filtered, fused and sharded.

`DataConfig` is the `[data]` section of the root config (the lead's `launch/config.py` composes it).
Every dataclass validates itself in `__post_init__` so a bad TOML value fails at load time with the
field name, not deep inside a Ray task.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

FORMATS = ("p5", "amazon2014", "yelp", "movielens")
ON_LEAKAGE = ("error", "drop")
MISSING_TEXT = ("error", "id")
SHORT_USERS = ("skip", "error")
SHARD_ENGINES = ("ray", "local")


@dataclass
class DatasetSpec:
    """One raw dataset: `name` namespaces its ids (`<name>:<raw id>`), `format` picks the reader."""

    name: str
    format: str
    input: str
    category: str | None = None  # Amazon-2014 category file stem, e.g. "Beauty" for reviews_Beauty_5.json.gz

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in ":/\\ ."):
            raise ValueError(
                f"data.datasets.name={self.name!r}: must be non-empty without ':', '/', '.', spaces"
            )
        if self.format not in FORMATS:
            raise ValueError(f"data.datasets[{self.name}].format={self.format!r}: expected one of {FORMATS}")
        if not self.input:
            raise ValueError(f"data.datasets[{self.name}].input is empty")


@dataclass
class FusionConfig:
    """The Fusion corpus (IDGenRec §3.1): pretraining datasets, held-out zero-shot datasets, user cap.

    Both lists empty means "every dataset goes into one corpus" (the single-dataset and benchmark case).
    """

    pretrain: list[str] = field(default_factory=list)
    zeroshot: list[str] = field(default_factory=list)
    # Pretraining datasets with more users are downsampled to this many (seeded); 0 disables the cap.
    # Zero-shot datasets are never downsampled: they are evaluated whole, as in the paper's Table 3.
    user_cap: int = 30000
    seed: int = 0
    # What to do when a zero-shot dataset's raw user/item id also occurs in the pretraining corpus:
    # "error" raises LeakageError; "drop" removes those users/items from the *pretraining* side (counted),
    # keeping the zero-shot test sets identical to the published benchmarks.
    on_leakage: str = "error"
    # P5-format user ids are per-file row numbers ("u1", "u2", ...) that collide across unrelated datasets
    # without being the same person; set false for such sources so only item ids are checked.
    check_users: bool = True

    def __post_init__(self) -> None:
        if self.user_cap < 0:
            raise ValueError(f"data.fusion.user_cap={self.user_cap}: must be >= 0 (0 disables the cap)")
        if self.on_leakage not in ON_LEAKAGE:
            raise ValueError(f"data.fusion.on_leakage={self.on_leakage!r}: expected one of {ON_LEAKAGE}")
        for key, names in (("pretrain", self.pretrain), ("zeroshot", self.zeroshot)):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"data.fusion.{key} lists {dup} more than once")
        overlap = sorted(set(self.pretrain) & set(self.zeroshot))
        if overlap:
            raise ValueError(f"data.fusion: datasets {overlap} are in both pretrain and zeroshot lists")


@dataclass
class ShardConfig:
    """WebDataset shard sizing and the engine that writes them.

    `samples_per_shard > 0` fixes the number of samples per shard and takes precedence; otherwise shards
    hold ~`target_mb` megabytes (the size per sample is estimated from the data, deterministically).
    """

    target_mb: float = 64.0  # large enough for sequential reads, small enough to spread over workers
    samples_per_shard: int = 0
    engine: str = "ray"  # "local" runs the same shard writer in-process (tests, tiny corpora)
    ray_address: str | None = None  # None: in-process local Ray; "auto" or "ray://host:port" for a cluster
    num_cpus: int = 2  # CPUs of the in-process local Ray (ignored when joining a cluster)

    def __post_init__(self) -> None:
        if self.samples_per_shard < 0:
            raise ValueError(f"data.shards.samples_per_shard={self.samples_per_shard}: must be >= 0")
        if not self.samples_per_shard and self.target_mb <= 0:
            raise ValueError(
                f"data.shards.target_mb={self.target_mb}: must be > 0 (or set samples_per_shard)"
            )
        if self.engine not in SHARD_ENGINES:
            raise ValueError(f"data.shards.engine={self.engine!r}: expected one of {SHARD_ENGINES}")
        if self.num_cpus < 1:
            raise ValueError(f"data.shards.num_cpus={self.num_cpus}: must be >= 1")


@dataclass
class DataConfig:
    """The whole data side: datasets -> preprocessing -> Fusion -> shards."""

    datasets: list[DatasetSpec] = field(default_factory=list)
    kcore: int = 5  # iterative k-core on users and items (P5/IDGenRec use 5)
    max_history: int = 50  # samples keep only the last `max_history` items of the history
    item_text_max_chars: int = 1024  # rendered item text is cut to this many characters
    missing_text: str = "error"  # item referenced without any text: "error" or "id" (text = "item: <id>")
    short_users: str = "skip"  # users with < 3 items after filtering: "skip" (counted) or "error"
    fusion: FusionConfig = field(default_factory=FusionConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    seed: int = 0  # seeds the order of samples across shards
    out: str | None = None  # default output corpus folder (the CLI's --out wins)

    def __post_init__(self) -> None:
        self.datasets = [d if isinstance(d, DatasetSpec) else DatasetSpec(**d) for d in self.datasets]
        if isinstance(self.fusion, dict):
            self.fusion = FusionConfig(**self.fusion)
        if isinstance(self.shards, dict):
            self.shards = ShardConfig(**self.shards)
        if self.kcore < 1:
            raise ValueError(f"data.kcore={self.kcore}: must be >= 1")
        if self.max_history < 1:
            raise ValueError(f"data.max_history={self.max_history}: must be >= 1")
        if self.item_text_max_chars < 1:
            raise ValueError(f"data.item_text_max_chars={self.item_text_max_chars}: must be >= 1")
        if self.missing_text not in MISSING_TEXT:
            raise ValueError(f"data.missing_text={self.missing_text!r}: expected one of {MISSING_TEXT}")
        if self.short_users not in SHORT_USERS:
            raise ValueError(f"data.short_users={self.short_users!r}: expected one of {SHORT_USERS}")
        names = [d.name for d in self.datasets]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"data.datasets: names {dup} are defined more than once")
        self._check_fusion_names(set(names))

    def _check_fusion_names(self, names: set[str]) -> None:
        listed = set(self.fusion.pretrain) | set(self.fusion.zeroshot)
        unknown = sorted(listed - names)
        if unknown:
            raise ValueError(f"data.fusion lists datasets {unknown} not defined in data.datasets")
        if listed and names - listed:
            raise ValueError(
                f"data.datasets {sorted(names - listed)} are in neither data.fusion.pretrain nor zeroshot"
            )

    @classmethod
    def from_dict(cls, raw: dict[str, Any], prefix: str = "data") -> DataConfig:
        """Build from a parsed TOML mapping, rejecting unknown keys with their full dotted path."""
        _reject_unknown(cls, raw, prefix)
        _reject_unknown(FusionConfig, raw.get("fusion", {}), f"{prefix}.fusion")
        _reject_unknown(ShardConfig, raw.get("shards", {}), f"{prefix}.shards")
        for i, d in enumerate(raw.get("datasets", [])):
            _reject_unknown(DatasetSpec, d, f"{prefix}.datasets[{i}]")
        return cls(**raw)

    def pretrain_names(self) -> list[str]:
        """Datasets of the main corpus: the pretrain list, or every dataset when no lists are given."""
        if self.fusion.pretrain or self.fusion.zeroshot:
            return list(self.fusion.pretrain)
        return [d.name for d in self.datasets]

    def sha256(self) -> str:
        """Hash of the resolved config (canonical JSON), recorded in every manifest."""
        resolved = dataclasses.asdict(self)
        resolved.pop("out")  # where the corpus goes does not change what it contains
        blob = json.dumps(resolved, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def _reject_unknown(cls: type, raw: Any, where: str) -> None:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a table, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown config key(s): {', '.join(f'{where}.{k}' for k in unknown)}")
