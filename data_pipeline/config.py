"""Typed configuration of the data side: which datasets, how they are filtered, fused and sharded.

`DataConfig` is the `[data]` section of the root config (the lead's `launch/config.py` composes it).
Every dataclass validates itself in `__post_init__` so a bad TOML value fails at load time with the
field name, not deep inside a Ray task.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

FORMATS = ("p5", "amazon2014", "yelp", "movielens")
ON_LEAKAGE = ("error", "drop")
MISSING_TEXT = ("error", "id")
SHORT_USERS = ("skip", "error")
SHARD_ENGINES = ("ray", "local")
USER_NAMESPACES = ("auto", "global", "per_dataset")
# Formats whose user ids only mean something inside one file: P5 numbers users u1..uN (or 1..N) per dataset,
# so "u7" of Toys and "u7" of Beauty are unrelated people. The other formats carry the platform's own ids.
PER_DATASET_USER_FORMATS = frozenset({"p5"})
# Formats whose files are already a paper's filtered set: the P5/IDGenRec files are the published 5-core sets
# with repeat interactions kept, so by default they are neither deduplicated nor k-cored again.
PREFILTERED_FORMATS = frozenset({"p5"})
_PLATFORM_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


@dataclass
class DatasetSpec:
    """One raw dataset: `name` namespaces its ids (`<name>:<raw id>`), `format` picks the reader.

    `platform` declares where the data comes from ("amazon", "yelp", "movielens", ...); the zero-shot
    harness calls a held-out dataset intra-platform when a pretraining dataset declares the same platform.
    It is never inferred from the format ("" = undeclared). `dedupe` and `kcore` are this dataset's
    preprocessing policy; None takes the format's default (see `DataConfig.policy`).
    """

    name: str
    format: str
    input: str
    category: str | None = None  # Amazon-2014 category file stem, e.g. "Beauty" for reviews_Beauty_5.json.gz
    platform: str = ""
    # Keep only the first interaction of every (user, item) pair. None: False for p5 (the papers' sets keep
    # repeat interactions), True for the raw formats.
    dedupe: bool | None = None
    # Iterative k-core on users and items; 0 = off. None: off for p5 (already the papers' 5-core sets),
    # data.kcore for the raw formats.
    kcore: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or any(c in self.name for c in ":/\\ ."):
            raise ValueError(
                f"data.datasets.name={self.name!r}: must be non-empty without ':', '/', '.', spaces"
            )
        where = f"data.datasets[{self.name}]"
        if self.format not in FORMATS:
            raise ValueError(f"{where}.format={self.format!r}: expected one of {FORMATS}")
        if not self.input:
            raise ValueError(f"{where}.input is empty")
        if not isinstance(self.platform, str) or (self.platform and not _PLATFORM_RE.match(self.platform)):
            raise ValueError(
                f"{where}.platform={self.platform!r}: expected '' (undeclared) or a lowercase name such as "
                "'amazon' or 'yelp' (letters, digits, '_', '-', '.')"
            )
        if self.dedupe is not None and not isinstance(self.dedupe, bool):
            raise ValueError(f"{where}.dedupe={self.dedupe!r}: expected true, false or unset (format default)")
        if self.kcore is not None and (
            isinstance(self.kcore, bool) or not isinstance(self.kcore, int) or self.kcore < 0
        ):
            raise ValueError(
                f"{where}.kcore={self.kcore!r}: expected an integer >= 0 (0 = off) or unset (format default)"
            )


@dataclass(frozen=True)
class DatasetPolicy:
    """One dataset's resolved data policy: what preprocessing and the leakage check do to it.

    Recorded per dataset in every manifest (`datasets.<name>.policy`) and in prepare()'s result.
    """

    format: str
    platform: str  # "" = undeclared
    dedupe: bool
    kcore: int  # 0 = no k-core filtering
    user_ids: str  # "global" (the same id is the same person in every dataset) or "per_dataset"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


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
    # Whose user ids can be compared across datasets in the leakage check. "auto": per dataset for formats
    # that number users per file (p5: "u1", "u2", ... collide across unrelated datasets without being the
    # same person), global for the formats carrying the platform's own ids (amazon2014 reviewerID, yelp,
    # movielens); "global" / "per_dataset" force one scope for every dataset. A user is checked only
    # between two datasets that both have global ids. Item ids (ASINs, business ids) are always checked.
    # (In the corpus itself every id is namespaced `<dataset>:<id>`, so users never merge across datasets.)
    user_namespace: str = "auto"

    def __post_init__(self) -> None:
        if self.user_cap < 0:
            raise ValueError(f"data.fusion.user_cap={self.user_cap}: must be >= 0 (0 disables the cap)")
        if self.on_leakage not in ON_LEAKAGE:
            raise ValueError(f"data.fusion.on_leakage={self.on_leakage!r}: expected one of {ON_LEAKAGE}")
        if self.user_namespace not in USER_NAMESPACES:
            raise ValueError(
                f"data.fusion.user_namespace={self.user_namespace!r}: expected one of {USER_NAMESPACES}"
            )
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
    kcore: int = 5  # iterative k-core of the raw formats (P5/IDGenRec use 5); a dataset's `kcore` wins
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
        if isinstance(raw.get("fusion"), dict) and "check_users" in raw["fusion"]:
            raise ValueError(
                f"{prefix}.fusion.check_users was replaced by {prefix}.fusion.user_namespace "
                f"(one of {USER_NAMESPACES}; 'auto' compares users only between datasets with global ids)"
            )
        _reject_unknown(FusionConfig, raw.get("fusion", {}), f"{prefix}.fusion")
        _reject_unknown(ShardConfig, raw.get("shards", {}), f"{prefix}.shards")
        for i, d in enumerate(raw.get("datasets", [])):
            _reject_unknown(DatasetSpec, d, f"{prefix}.datasets[{i}]")
        return cls(**raw)

    def policy(self, spec: DatasetSpec | str) -> DatasetPolicy:
        """The resolved policy of one dataset (a spec or a dataset name): format defaults filled in."""
        if isinstance(spec, str):
            spec = next(d for d in self.datasets if d.name == spec)
        prefiltered = spec.format in PREFILTERED_FORMATS
        scope = self.fusion.user_namespace
        if scope == "auto":
            scope = "per_dataset" if spec.format in PER_DATASET_USER_FORMATS else "global"
        return DatasetPolicy(
            format=spec.format,
            platform=spec.platform,
            dedupe=(not prefiltered) if spec.dedupe is None else spec.dedupe,
            kcore=(0 if prefiltered else self.kcore) if spec.kcore is None else spec.kcore,
            user_ids=scope,
        )

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
