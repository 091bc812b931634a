"""Exactly-once, resumable loader over the WebDataset shards of a corpus (docs/ARCHITECTURE.md).

The contract (DESIGN.md "Loader state"): across R ranks x W DataLoader workers every sample of the
selected split(s) is delivered exactly once per epoch; `state_dict()` taken at any batch boundary and
restored with `load_state_dict()` continues exactly where the *training loop* stopped, also under a
different number of ranks or workers.

How it works, and why:

* **Index at open.** `ShardDataset` reads every shard once when it is built: checks its size and sha256
  against the manifest (so a corrupt corpus fails before step 0, not hours in), walks the tar headers
  with `tarfile` and keeps, for each selected sample, its byte offset, size and key. The split/dataset
  filter is applied here (by parsing each sample's json), so every later count is exact. Cost: one
  sequential read of the corpus per rank at start (~1 s per 200k samples here).
* **Epoch order** is a pure function of (seed, epoch): a seeded permutation of shards, then a seeded
  permutation inside each shard. Sample `p` of that order has *global position* `p`.
* **Dealing.** The positions not yet consumed when a "deal" starts are dealt round-robin to the C = R*W
  consumers: consumer (rank r, slot s) takes `remaining[r + R*s :: C]`. Ranks therefore differ by at most
  one sample, and each batch is a slice of the global shuffle regardless of topology. I/O trade-off:
  every worker opens every shard, but reads only its own members, in file order (forward seeks), so the
  bytes read in total are the corpus' bytes once; the alternative (contiguous shard blocks per worker)
  opens fewer files but makes mixing and resumption depend on the topology.
* **Consumption is what the loop received.** Every sample carries `_pos`; `ShardLoader` wraps the collate
  function so each batch comes back with its positions, and marks them consumed only when the batch
  reaches the loop. Samples a worker prefetched but the loop never saw are not consumed. State =
  (epoch, seed, consumed positions as intervals, the current deal, per-rank pad counts). The consumed
  set of a lock-step run is a prefix plus a few positions beyond it, so the intervals stay tiny.
* **Resume.** `merge_states` unions the states of all ranks (`gather_state` does the all_gather). Same
  topology: the deal is kept and every worker continues its own stream; the loader also rotates which
  DataLoader worker starts, so the loop sees the very batches it would have seen. New topology: a new
  deal over the positions not consumed — exactly once still holds by construction.
* **Equal batches per rank** (`even_batches`): DDP needs every rank to run the same number of steps.
  Each consumer pads its stream at the end to T = ceil(ceil(M/C)/B)*B samples (M = positions dealt) with
  copies flagged `"_pad": True, "_pos": -1`; the loss must mask them (they are never counted consumed).
  Then every rank yields exactly W*T/B full batches.
* **Persistent workers** keep their own copy of the dataset, so the main process hands each new iteration
  its plan (epoch, consumed set, deal) through a small file the workers read at `iter()` time.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist
from fusionrec.data_pipeline.errors import DataError
from fusionrec.fileio import atomic_write_text
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

SPLITS = ("train", "valid", "test")
MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
STATE_VERSION = 1


@dataclass
class LoaderConfig:
    """What the loader reads and how it batches. `datasets` empty = every dataset of the corpus."""

    seed: int = 0
    splits: list[str] = field(default_factory=lambda: ["train"])
    datasets: list[str] = field(default_factory=list)
    shuffle: bool = True
    max_samples: int | None = None  # keep the first N selected samples (corpus order) for quick runs
    batch_size: int = 32
    even_batches: bool = True  # pad the tail so every rank runs the same number of full batches
    num_workers: int = 0
    persistent_workers: bool = False
    prefetch_factor: int = 2
    verify: bool = True  # sha256 of every shard at open (size is always checked)

    def __post_init__(self) -> None:
        if not self.splits or any(s not in SPLITS for s in self.splits):
            raise ValueError(f"loader.splits={self.splits!r}: expected a non-empty subset of {SPLITS}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"loader.max_samples={self.max_samples}: must be >= 1 (or unset)")
        if self.batch_size < 1:
            raise ValueError(f"loader.batch_size={self.batch_size}: must be >= 1")
        if self.num_workers < 0:
            raise ValueError(f"loader.num_workers={self.num_workers}: must be >= 0")
        if self.prefetch_factor < 1:
            raise ValueError(f"loader.prefetch_factor={self.prefetch_factor}: must be >= 1")
        if self.persistent_workers and self.num_workers == 0:
            raise ValueError("loader.persistent_workers=true needs loader.num_workers >= 1")

    def selection(self) -> dict[str, Any]:
        """The fields that define which samples exist (a state is only valid for the same selection)."""
        return {
            "splits": sorted(self.splits),
            "datasets": sorted(self.datasets),
            "max_samples": self.max_samples,
        }


# ----------------------------------------------------------------------------------------------- index


@dataclass
class _ShardIndex:
    """The selected samples of one shard, in file order."""

    path: str
    offsets: np.ndarray  # int64 byte offset of each sample's json payload
    sizes: np.ndarray  # int64 payload sizes
    key_blob: bytes  # all keys, utf-8, concatenated (a list of 1e7 str would cost ~1 GB)
    key_ends: np.ndarray  # int64 end of key i in key_blob

    def __len__(self) -> int:
        return len(self.offsets)

    def key(self, i: int) -> str:
        start = int(self.key_ends[i - 1]) if i else 0
        return self.key_blob[start : int(self.key_ends[i])].decode("utf-8")

    def truncated(self, n: int) -> _ShardIndex:
        end = int(self.key_ends[n - 1]) if n else 0
        return _ShardIndex(
            self.path, self.offsets[:n], self.sizes[:n], self.key_blob[:end], self.key_ends[:n]
        )


def read_manifest(root: str | Path) -> tuple[dict[str, Any], str]:
    """The corpus manifest and the sha256 of its bytes (which identifies the corpus in loader states)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DataError(path, None, f"not a corpus: no {MANIFEST}")
    raw = path.read_bytes()
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as err:
        raise DataError(path, err.lineno, f"manifest is not valid JSON: {err.msg}") from err
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        found = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise DataError(path, None, f"schema_version={found!r}, this loader reads {SCHEMA_VERSION}")
    for i, entry in enumerate(manifest.get("shards") or []):
        if not isinstance(entry, dict) or not {"name", "samples", "bytes", "sha256"} <= entry.keys():
            raise DataError(path, None, f"shards[{i}]={entry!r}: needs name, samples, bytes, sha256")
    return manifest, hashlib.sha256(raw).hexdigest()


def _read_shard_bytes(path: Path, entry: dict[str, Any], verify: bool) -> bytes:
    if not path.is_file():
        raise DataError(path, None, "shard listed in manifest.json is missing")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise DataError(path, None, f"size {size} bytes != manifest bytes {entry['bytes']}")
    data = path.read_bytes()
    if verify and hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise DataError(path, None, f"sha256 mismatch with manifest ({entry['sha256'][:12]}...)")
    return data


_ZERO_BLOCK = bytes(512)
_REGULAR = (ord("0"), 0)  # tar typeflags of a regular file
# A top-level string field of a sample's json. Values with escapes don't match and fall back to
# json.loads; a key cannot match inside a string value, where its quotes would be escaped.
_FIELD = {f: re.compile(rb'"' + f.encode() + rb'"\s*:\s*"([^"\\]*)"') for f in ("split", "dataset")}


def _tar_members(data: bytes, path: Path, checksums: bool) -> tuple[list[bytes], list[int], list[int]]:
    """(names, payload offsets, sizes) of the members of a tar held in memory.

    Fast path for plain ustar headers (what tarfile/webdataset/Ray write for short names): ~1 us per
    member instead of ~50 us through tarfile. Any other header (pax, GNU long name, base-256 size)
    sends the whole shard through `tarfile`, which handles every format. Header checksums are skipped
    when the shard's sha256 was already verified (its bytes are then exactly the writer's).
    """
    names, offsets, sizes, pos = [], [], [], 0
    while pos + 512 <= len(data):
        if (
            data[pos + 156] not in _REGULAR
            or data[pos + 124] & 0x80
            or data[pos + 257 : pos + 262] != b"ustar"
        ):
            if data[pos : pos + 512] == _ZERO_BLOCK:
                return names, offsets, sizes
            return _tar_members_slow(data, path)
        try:
            size = int(data[pos + 124 : pos + 136].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError as err:
            raise DataError(path, None, f"corrupt tar header at byte {pos}") from err
        if checksums:
            _check_header(data[pos : pos + 512], pos, path)
        name = data[pos : pos + 100].split(b"\0", 1)[0]
        if data[pos + 257 : pos + 263] == b"ustar\0":  # POSIX name prefix; GNU keeps atime etc. there
            prefix = data[pos + 345 : pos + 500].split(b"\0", 1)[0]
            name = prefix + b"/" + name if prefix else name
        names.append(name)
        offsets.append(pos + 512)
        sizes.append(size)
        pos += 512 + -(-size // 512) * 512
    raise DataError(path, None, f"truncated tar: no end-of-archive block after byte {pos}")


def _check_header(header: bytes, pos: int, path: Path) -> None:
    try:
        checksum = int(header[148:156].split(b"\0", 1)[0].strip(), 8)
    except ValueError as err:
        raise DataError(path, None, f"corrupt tar header at byte {pos}") from err
    if checksum != sum(header[:148]) + 256 + sum(header[156:]):
        raise DataError(path, None, f"corrupt tar header at byte {pos} (checksum)")


def _tar_members_slow(data: bytes, path: Path) -> tuple[list[bytes], list[int], list[int]]:
    try:
        members = tarfile.open(fileobj=io.BytesIO(data), mode="r:").getmembers()
    except tarfile.TarError as err:
        raise DataError(path, None, f"not a readable tar file: {err}") from err
    for m in members:
        if not m.isfile():
            raise DataError(path, None, f"member {m.name!r}: expected only '<key>.json' sample files")
    return (
        [m.name.encode("utf-8") for m in members],
        [m.offset_data for m in members],
        [m.size for m in members],
    )


def _field(data: bytes, start: int, size: int, name: str, path: Path, member: str) -> str:
    match = _FIELD[name].search(data, start, start + size)
    if match is not None:
        return match.group(1).decode("utf-8")
    return _decode(data[start : start + size], path, member)[name]


def _index_shard(path: Path, entry: dict[str, Any], cfg: LoaderConfig) -> _ShardIndex:
    """Walk one shard's tar members; keep the samples the config selects.

    Only `split`/`dataset` are read here (and only when the filter needs them); a sample's full json is
    validated when it is read, failing with a DataError naming shard and member.
    """
    data = _read_shard_bytes(path, entry, cfg.verify)
    names, starts, lengths = _tar_members(data, path, checksums=not cfg.verify)
    if len(names) != entry["samples"]:
        raise DataError(path, None, f"holds {len(names)} samples, manifest says {entry['samples']}")
    need_split = set(cfg.splits) != set(SPLITS)
    offsets, sizes, keys = [], [], []
    for raw, start, size in zip(names, starts, lengths, strict=True):
        if not raw.endswith(b".json"):
            raise DataError(path, None, f"member {raw!r}: expected only '<key>.json' sample files")
        member = raw.decode("utf-8")
        if need_split and _field(data, start, size, "split", path, member) not in cfg.splits:
            continue
        if cfg.datasets and _field(data, start, size, "dataset", path, member) not in cfg.datasets:
            continue
        offsets.append(start)
        sizes.append(size)
        keys.append(raw[: -len(b".json")])
    return _ShardIndex(
        str(path),
        np.asarray(offsets, dtype=np.int64),
        np.asarray(sizes, dtype=np.int64),
        b"".join(keys),
        np.cumsum([len(k) for k in keys], dtype=np.int64),
    )


def _decode(payload: bytes, path: Path | str, member: str) -> dict[str, Any]:
    try:
        sample = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(path, None, f"member {member!r}: invalid JSON ({err})") from err
    if not isinstance(sample, dict) or not {"dataset", "split", "history", "target"} <= sample.keys():
        raise DataError(path, None, f"member {member!r}: sample needs dataset, split, history, target")
    return sample


def _build_index(root: Path, manifest: dict[str, Any], cfg: LoaderConfig) -> list[_ShardIndex]:
    known = set(manifest.get("datasets") or {})
    unknown = sorted(set(cfg.datasets) - known)
    if unknown:
        raise ValueError(f"loader.datasets: {unknown} not in this corpus (has {sorted(known)})")
    shards, kept = [], 0
    empty = np.zeros(0, dtype=np.int64)
    for entry in manifest["shards"]:
        if cfg.max_samples is not None and kept >= cfg.max_samples:
            # Quick runs need not read (or verify) the shards they will never use.
            shards.append(_ShardIndex(str(root / entry["name"]), empty, empty, b"", empty))
            continue
        index = _index_shard(root / entry["name"], entry, cfg)
        if cfg.max_samples is not None:
            index = index.truncated(min(len(index), cfg.max_samples - kept))
        kept += len(index)
        shards.append(index)
    return shards


# ------------------------------------------------------------------------------------- position sets


def _to_intervals(mask: np.ndarray) -> list[list[int]]:
    """A boolean mask as sorted disjoint half-open [start, end) intervals (compact, JSON-friendly)."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return [
        [int(a), int(b)] for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True)
    ]


def _from_intervals(intervals: Sequence[Sequence[int]], n: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    prev = 0
    for start, end in intervals:
        if not prev <= start < end <= n:
            raise ValueError(f"loader state: interval [{start}, {end}) is unsorted or outside [0, {n})")
        mask[start:end] = True
        prev = end
    return mask


@dataclass
class _Deal:
    """Who gets which position: `base` = positions consumed when the deal started."""

    world: int
    workers: int
    base: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {"world": self.world, "workers": self.workers, "base": _to_intervals(self.base)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], n: int) -> _Deal:
        return cls(int(d["world"]), int(d["workers"]), _from_intervals(d["base"], n))

    def positions(self, rank: int, slot: int) -> np.ndarray:
        """Positions dealt to consumer (rank, slot), consumed or not."""
        return np.flatnonzero(~self.base)[rank + self.world * slot :: self.world * self.workers]

    def items_per_slot(self, batch_size: int) -> int:
        """T: the padded length of every consumer's stream (even_batches)."""
        most = math.ceil(int((~self.base).sum()) / (self.world * self.workers))
        return math.ceil(most / batch_size) * batch_size


# ------------------------------------------------------------------------------------------ dataset


class ShardDataset(IterableDataset):
    """Samples of a corpus for one rank, exactly once per epoch across ranks and workers.

    Iterating it directly (no DataLoader) tracks consumption per yielded sample; under a DataLoader use
    `ShardLoader`, which tracks what the loop received. Yields the sample json plus `__key__`, `_pos`
    (global position in the epoch order, -1 for padding), `_pad` and `_slot` (the consumer slot).
    """

    def __init__(
        self, root: str | Path, cfg: LoaderConfig | None = None, *, rank: int = 0, world_size: int = 1
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
        self.root = Path(root)
        self.cfg = cfg or LoaderConfig()
        self.rank, self.world_size = rank, world_size
        self.manifest, self.manifest_sha256 = read_manifest(self.root)
        self._shards = _build_index(self.root, self.manifest, self.cfg)
        self._sizes = np.asarray([len(s) for s in self._shards], dtype=np.int64)
        self.total = int(self._sizes.sum())
        self._track_on_yield = True  # ShardLoader turns this off: it tracks from delivered batches
        self._plan_path: str | None = None  # set by ShardLoader when workers run the iteration
        self.set_epoch(0)

    # -- epoch order ------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning (call before each epoch, like DistributedSampler)."""
        if epoch < 0:
            raise ValueError(f"epoch={epoch}: must be >= 0")
        self.epoch = epoch
        self._consumed = np.zeros(self.total, dtype=bool)
        self._deal: _Deal | None = None
        self._pads: list[int] = []
        self._next_slot = 0
        self._layout_cache: tuple[int, np.ndarray, np.ndarray] | None = None

    def _layout(self) -> tuple[np.ndarray, np.ndarray]:
        """(shard visiting order, start position of each visited shard's block) for this epoch."""
        if self._layout_cache is None or self._layout_cache[0] != self.epoch:
            order = np.arange(len(self._shards))
            if self.cfg.shuffle:
                order = np.random.default_rng([self.cfg.seed, self.epoch]).permutation(len(self._shards))
            starts = np.concatenate(([0], np.cumsum(self._sizes[order])))
            self._layout_cache = (self.epoch, order, starts)
        return self._layout_cache[1], self._layout_cache[2]

    def _within(self, shard: int) -> np.ndarray:
        n = len(self._shards[shard])
        if not self.cfg.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.cfg.seed, self.epoch, shard]).permutation(n)

    def order_keys(self) -> list[str]:
        """Every selected sample's key in this epoch's global order (position p = element p)."""
        order, _ = self._layout()
        return [self._shards[s].key(int(m)) for s in order for m in self._within(int(s))]

    # -- dealing and accounting ---------------------------------------------------------------------

    def _planned_deal(self, workers: int) -> tuple[_Deal, list[int], int]:
        """The deal an iteration with `workers` slots would use, without changing any state."""
        deal = self._deal
        if deal is not None and (deal.world, deal.workers) == (self.world_size, workers):
            return deal, self._pads, self._next_slot
        return _Deal(self.world_size, workers, self._consumed.copy()), [0] * workers, 0

    def _begin(self, workers: int) -> None:
        """Fix the deal for the next iteration and publish it to worker processes."""
        self._deal, self._pads, self._next_slot = self._planned_deal(workers)
        if self._plan_path is not None:
            atomic_write_text(self._plan_path, json.dumps(self._state()))

    def _record(self, positions: Sequence[int], slot: int, pads: int) -> None:
        """The loop received these samples from consumer `slot` (and `pads` padding copies)."""
        assert self._deal is not None, "a sample was delivered outside an iteration"
        self._consumed[np.asarray(positions, dtype=np.int64)] = True
        self._pads[slot] += pads
        self._next_slot = (slot + 1) % len(self._pads)

    def num_samples(self, rank: int | None = None) -> int:
        """Real samples `rank` (default: this one) still receives in this epoch."""
        rank = self.rank if rank is None else rank
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank={rank}: outside world_size={self.world_size}")
        deal, _, _ = self._planned_deal(self._deal.workers if self._deal else 1)
        mine = np.flatnonzero(~deal.base)[rank :: self.world_size]
        return int((~self._consumed[mine]).sum())

    def num_batches(self, workers: int = 1) -> int:
        """Batches this rank still yields in this epoch under a DataLoader with `workers` (>= 1) slots."""
        deal, pads, _ = self._planned_deal(workers)
        batch, total = self.cfg.batch_size, 0
        for slot in range(workers):
            dealt = deal.positions(self.rank, slot)
            items = int((~self._consumed[dealt]).sum())
            if self.cfg.even_batches:
                items += deal.items_per_slot(batch) - len(dealt) - pads[slot]
            total += math.ceil(items / batch)
        return total

    # -- iteration --------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        if info is None:
            workers, worker_id = 1, 0
            self._begin(1)
        else:
            workers, worker_id = info.num_workers, info.id
            if self._plan_path is not None:  # persistent workers: the main process' current plan
                with open(self._plan_path) as f:
                    self._apply_state(json.load(f), check_ranks=False)
            if self._deal is None or self._deal.workers != workers:
                raise RuntimeError("ShardDataset under a DataLoader with workers: wrap it in ShardLoader")
        slot = (worker_id + self._next_slot) % workers
        track = self._track_on_yield and info is None
        for sample in self._stream(slot):
            if track:
                self._record([] if sample["_pad"] else [sample["_pos"]], slot, int(sample["_pad"]))
            yield sample

    def _stream(self, slot: int) -> Iterator[dict[str, Any]]:
        assert self._deal is not None
        dealt = self._deal.positions(self.rank, slot)
        last = None
        for sample in self._read(dealt[~self._consumed[dealt]]):
            sample["_slot"] = slot
            last = sample
            yield sample
        if not self.cfg.even_batches:
            return
        n_pad = self._deal.items_per_slot(self.cfg.batch_size) - len(dealt) - self._pads[slot]
        if n_pad > 0 and last is None:  # nothing real left here: copy any sample of the epoch
            last = next(self._read(np.asarray([dealt[-1] if len(dealt) else 0])))
        for _ in range(n_pad):
            yield {**last, "_pos": -1, "_pad": True, "_slot": slot}

    def _read(self, positions: np.ndarray) -> Iterator[dict[str, Any]]:
        """Samples at the given ascending positions, shard by shard, each shard read in file order."""
        order, starts = self._layout()
        cuts = np.searchsorted(positions, starts)
        for block, shard in enumerate(order):
            pos = positions[cuts[block] : cuts[block + 1]]
            if len(pos):
                members = self._within(int(shard))[pos - starts[block]]
                yield from self._read_members(self._shards[int(shard)], members, pos)

    @staticmethod
    def _read_members(index: _ShardIndex, members: np.ndarray, pos: np.ndarray) -> Iterator[dict[str, Any]]:
        payloads: list[bytes] = [b""] * len(members)
        with open(index.path, "rb") as f:
            for i in np.argsort(members, kind="stable"):  # forward seeks only
                f.seek(int(index.offsets[members[i]]))
                payloads[i] = f.read(int(index.sizes[members[i]]))
        for i, member in enumerate(members):
            key = index.key(int(member))
            sample = _decode(payloads[i], index.path, f"{key}.json")
            sample.update({"__key__": key, "_pos": int(pos[i]), "_pad": False})
            yield sample

    # -- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """This rank's view of the epoch's progress; merge all ranks' states before resuming elsewhere."""
        return self._state()

    def _state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "manifest_sha256": self.manifest_sha256,
            "selection": self.cfg.selection(),
            "seed": self.cfg.seed,
            "shuffle": self.cfg.shuffle,
            "epoch": self.epoch,
            "num_samples": self.total,
            "world_size": self.world_size,
            "consumed": _to_intervals(self._consumed),
            "deal": self._deal.to_dict() if self._deal is not None else None,
            "ranks": {str(self.rank): {"pads": list(self._pads), "next_slot": self._next_slot}},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` (this rank's own, or `merge_states` of all ranks of the saving run)."""
        self._apply_state(state, check_ranks=True)

    def _apply_state(self, state: dict[str, Any], check_ranks: bool) -> None:
        _check_compatible(state, self._state())
        ranks = state["ranks"]
        deal = state["deal"]
        same_topology = deal is not None and deal["world"] == self.world_size and str(self.rank) in ranks
        if check_ranks and not same_topology and sorted(map(int, ranks)) != list(range(state["world_size"])):
            raise ValueError(
                f"loader state holds ranks {sorted(map(int, ranks))} of a {state['world_size']}-rank run; "
                "resuming on another topology needs merge_states() of every rank's state"
            )
        self.set_epoch(int(state["epoch"]))
        self._consumed = _from_intervals(state["consumed"], self.total)
        if same_topology:  # keep the deal: every consumer continues its own stream
            self._deal = _Deal.from_dict(deal, self.total)
            self._pads = [int(p) for p in ranks[str(self.rank)]["pads"]]
            self._next_slot = int(ranks[str(self.rank)]["next_slot"])


def _check_compatible(state: dict[str, Any], ours: dict[str, Any]) -> None:
    """A state only means something for the same corpus, selection and shuffle seed."""
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        found = state.get("version") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"loader state version {found!r}, expected {STATE_VERSION}")
    if state["manifest_sha256"] != ours["manifest_sha256"]:
        raise ValueError(
            f"loader state is from another corpus: manifest sha256 {state['manifest_sha256'][:12]}... "
            f"!= this corpus' {ours['manifest_sha256'][:12]}..."
        )
    for key in ("selection", "seed", "shuffle", "num_samples"):
        if state[key] != ours[key]:
            raise ValueError(f"loader state {key}={state[key]!r} != this loader's {ours[key]!r}")


def merge_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The union of the per-rank states of one run (what a new topology resumes from)."""
    if not states:
        raise ValueError("merge_states: no states given")
    merged = dict(states[0])
    for other in states[1:]:
        _check_compatible(other, merged)
        for key in ("epoch", "world_size", "deal"):
            if other[key] != merged[key]:
                raise ValueError(f"merge_states: ranks disagree on {key}: {merged[key]!r} != {other[key]!r}")
    n = merged["num_samples"]
    consumed = np.zeros(n, dtype=bool)
    ranks: dict[str, Any] = {}
    for state in states:
        consumed |= _from_intervals(state["consumed"], n)
        for rank, progress in state["ranks"].items():
            if rank in ranks and ranks[rank] != progress:
                raise ValueError(f"merge_states: two different states for rank {rank}")
            ranks[rank] = progress
    merged["consumed"] = _to_intervals(consumed)
    merged["ranks"] = dict(sorted(ranks.items(), key=lambda kv: int(kv[0])))
    return merged


def gather_state(state: dict[str, Any]) -> dict[str, Any]:
    """All ranks' states merged (collective under torch.distributed; identity in a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return state
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return merge_states(states)


# ------------------------------------------------------------------------------------------- loader


def collate_samples(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Default collate: the list of sample dicts (histories have different lengths)."""
    return samples


@dataclass
class _Tracked:
    batch: Any
    positions: list[int]
    slot: int
    pads: int


class _TrackingCollate:
    """Runs the user's collate in the worker and sends the batch's positions back with it."""

    def __init__(self, fn: Callable[[list[dict[str, Any]]], Any]) -> None:
        self.fn = fn

    def __call__(self, samples: list[dict[str, Any]]) -> _Tracked:
        positions = [s["_pos"] for s in samples if not s["_pad"]]
        return _Tracked(self.fn(samples), positions, samples[0]["_slot"], len(samples) - len(positions))


class ShardLoader:
    """A torch DataLoader over a `ShardDataset` whose state is what the training loop has received.

    `collate_fn` gets the list of sample dicts (raw item ids; the trainer joins its current ID table
    here). Padding samples (`_pad`) appear only with `even_batches` and only in a rank's last batches.
    """

    def __init__(
        self,
        dataset: ShardDataset,
        collate_fn: Callable[[list[dict[str, Any]]], Any] = collate_samples,
        *,
        multiprocessing_context: str | None = None,
    ) -> None:
        self.dataset, self.cfg = dataset, dataset.cfg
        self.workers = max(1, self.cfg.num_workers)
        dataset._track_on_yield = False
        self._plan_dir = None
        if self.cfg.num_workers > 0:
            self._plan_dir = tempfile.mkdtemp(prefix="fusionrec-loader-")
            dataset._plan_path = os.path.join(self._plan_dir, "plan.json")
        self._loader = DataLoader(
            dataset,
            batch_size=self.cfg.batch_size,
            num_workers=self.cfg.num_workers,
            collate_fn=_TrackingCollate(collate_fn),
            persistent_workers=self.cfg.persistent_workers,
            prefetch_factor=self.cfg.prefetch_factor if self.cfg.num_workers > 0 else None,
            multiprocessing_context=multiprocessing_context if self.cfg.num_workers > 0 else None,
        )

    def __iter__(self) -> Iterator[Any]:
        self.dataset._begin(self.workers)
        for out in self._loader:
            self.dataset._record(out.positions, out.slot, out.pads)
            yield out.batch

    def __len__(self) -> int:
        return self.dataset.num_batches(self.workers)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dataset.load_state_dict(state)

    def close(self) -> None:
        """Stop persistent workers and remove the plan file."""
        self._loader = None
        if self._plan_dir is not None:
            shutil.rmtree(self._plan_dir, ignore_errors=True)
            self._plan_dir = None

    def __del__(self) -> None:
        self.close()
