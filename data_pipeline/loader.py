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

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist
from fusionrec.data_pipeline.records import SPLITS
from fusionrec.data_pipeline.shard_index import (  # noqa: F401  (read_manifest, _tar_members*: re-exported)
    MANIFEST,
    SCHEMA_VERSION,
    _build_index,
    _decode,
    _ShardIndex,
    _tar_members,
    _tar_members_slow,
    read_manifest,
)
from fusionrec.fileio import atomic_write_text
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

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
