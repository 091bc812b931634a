"""Length bucketing for training batches, on top of data_pipeline's exactly-once ShardLoader.

Prompts of one random batch differ a lot in length (Amazon Beauty: median history 4 items, 10% over 20),
so a batch padded to its longest prompt is mostly padding. ``BucketedLoader`` reads ``window`` consecutive
raw batches, regroups their samples by prompt length (``bucket_window``) and collates the regrouped
batches: same samples, same number of batches per rank (the loop's lock-step across data-parallel ranks
holds), less padding.

Exactly-once and exact resume. The shard loader marks a raw batch consumed when it hands it over, i.e.
the whole window at once, while the loop has trained only some of the regrouped batches. So:

* ``state_dict()`` mid-window = the loader state at the window's start + the number of regrouped batches
  handed out; a resume re-reads the same window (same deal, same positions), regroups it identically (a
  pure function of the window's content) and skips those batches.
* ``close()`` mid-window (a phase bounded by steps ends inside a window) commits exactly what was handed
  out: the window-start state plus the handed-out samples, so the samples read but never trained are
  delivered by the next loader over the same dataset instead of being lost for the epoch.

The window-start state always carries the loader's deal (for the first window it is taken after the first
raw batch and that batch is un-marked), so it is meaningful per rank without a collective (ranks keep
their own streams). The state edits use the format documented in data_pipeline/loader.py (consumed
positions as sorted half-open intervals, per-rank padding counts per slot).

Another world size (elastic resume): the state also carries ``committed`` = every rank's window start with
its handed-out samples marked, merged over ranks; ``elastic_state`` turns the saved states into a plain
resume from there (new deal over the rest, nothing skipped), so exactly-once holds across the change.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from fusionrec.data_pipeline.loader import (
    ShardDataset,
    ShardLoader,
    collate_samples,
    gather_state,
    merge_states,
)

Sample = dict[str, Any]


def bucket_window(
    batches: Sequence[list[Sample]], cost: Callable[[Mapping[str, Any]], int], seed: int, epoch: int
) -> list[list[Sample]]:
    """Regroup a window of consecutive batches into batches of similar prompt length.

    The window's samples are sorted by ``cost`` (ties by loader position: a total order), cut into batches
    of the original sizes, and the batches put in an order drawn from (seed, epoch, the window's positions),
    so long and short batches alternate at random. The result is a pure function of the window's content
    (identical after a resume); every sample of the window appears exactly once. Loader padding copies
    (``_pad``) are regrouped like samples (their labels stay -100).
    """
    samples = [s for b in batches for s in b]
    order = sorted(range(len(samples)), key=lambda i: (cost(samples[i]), samples[i]["_pos"], i))
    out, at = [], 0
    for size in (len(b) for b in batches):
        out.append([samples[i] for i in order[at : at + size]])
        at += size
    positions = ",".join(str(s["_pos"]) for s in samples)
    digest = hashlib.blake2b(f"{seed}:{epoch}:{positions}".encode(), digest_size=8).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
    return [out[int(i)] for i in torch.randperm(len(out), generator=gen)]


def padding_fraction(batch: Mapping[str, torch.Tensor]) -> float:
    """Share of a collated batch's encoder input that is padding (what bucketing reduces)."""
    mask = batch["attention_mask"]
    return 1.0 - float(mask.sum()) / mask.numel()


def _mark(state: dict[str, Any], rank: int, samples: Sequence[Sample], consumed: bool) -> dict[str, Any]:
    """A copy of a loader state with ``samples`` marked consumed (or not) and their pads counted (or not)."""
    state = copy.deepcopy(state)
    mask = np.zeros(int(state["num_samples"]) + 2, dtype=np.int8)
    for a, b in state["consumed"]:
        mask[a + 1 : b + 1] = 1
    pos = [s["_pos"] for s in samples if not s["_pad"]]
    mask[np.asarray(pos, dtype=np.int64) + 1] = int(consumed)
    edges = np.diff(mask)
    state["consumed"] = [
        [int(a), int(b)] for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True)
    ]
    pads = state["ranks"][str(rank)]["pads"]
    for s in samples:
        if s["_pad"]:
            pads[s["_slot"]] += 1 if consumed else -1
    return state


def elastic_state(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One BucketedLoader state for another world size, from the states every saving rank wrote.

    The saving ranks' windows mean nothing under a new deal, so the state is the union of what they
    committed (window starts + handed-out samples; the rest of their windows is dealt again) with no
    batches to skip. A state saved mid-window without ``committed`` (older format) cannot be re-split.
    """
    for state in states:
        if state.get("taken", 0) and "committed" not in state:
            raise ValueError(
                f"length-bucketing state saved {state['taken']} batches into a window without the handed-out "
                "samples; resume it on the world size it was saved with"
            )
    merged = merge_states([s.get("committed", s["inner"]) for s in states])
    return {"bucket_window": states[0]["bucket_window"], "taken": 0, "inner": merged, "committed": merged}


class BucketedLoader:
    """Batches of similar prompt length over a ShardDataset, exactly once, resumable mid-window."""

    def __init__(
        self,
        dataset: ShardDataset,
        collate: Callable[[list[Sample]], Any],
        cost: Callable[[Mapping[str, Any]], int],
        window: int,
        seed: int = 0,
    ) -> None:
        if window < 2:
            raise ValueError(f"bucket window must be >= 2 batches, got {window}")
        self.dataset, self.collate, self.cost, self.window, self.seed = dataset, collate, cost, window, seed
        self.loader = ShardLoader(dataset, collate_samples)
        self._reset()

    def _reset(self) -> None:
        self._start: dict[str, Any] | None = None  # local loader state at the current window's start
        self._batches: list[list[Sample]] = []  # the current window, regrouped
        self._taken = 0  # regrouped batches of the current window handed out
        self._skip = 0  # after a resume: batches of the first window that were already trained

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.loader)
        while True:
            start = self.loader.state_dict() if self.loader.state_dict()["deal"] is not None else None
            raw = list(itertools.islice(it, self.window))
            if not raw:
                return
            if start is None:  # the deal was made by this first read: take it, un-marking that read
                start = _mark(self.loader.state_dict(), self.dataset.rank, [s for b in raw for s in b], False)
            self._start = start
            self._batches = bucket_window(raw, self.cost, self.seed, self.dataset.epoch)
            self._taken, self._skip = self._skip, 0
            while self._taken < len(self._batches):
                self._taken += 1  # before the yield: the loop trains on it before any state_dict()
                yield self.collate(self._batches[self._taken - 1])

    def __len__(self) -> int:
        return len(self.loader) + (len(self._batches) - self._taken if self._start is not None else 0)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)
        self._reset()

    def state_dict(self) -> dict[str, Any]:
        """Collective (gathers every rank's window-start state, and what each rank handed out of it).

        ``inner`` + ``taken`` resume on the same world size (same deal: re-read the window, skip ``taken``);
        ``committed`` (window start + handed-out samples, as ``close()`` commits) resumes on another one,
        where the deal and so the windows differ (see :func:`elastic_state`).
        """
        inner = self._start if self._start is not None else self.loader.state_dict()
        return {
            "bucket_window": self.window,
            "taken": self._taken,
            "inner": gather_state(inner),
            "committed": gather_state(self._committed(inner)),
        }

    def _committed(self, inner: dict[str, Any]) -> dict[str, Any]:
        if self._start is None or self._taken == 0:
            return inner
        handed = [s for b in self._batches[: self._taken] for s in b]
        return _mark(self._start, self.dataset.rank, handed, True)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "bucket_window" not in state:  # saved without bucketing: a plain loader state
            self.loader.load_state_dict(state)
            self._reset()
            return
        if state["bucket_window"] != self.window:
            raise ValueError(
                f"loader state was saved with a bucket window of {state['bucket_window']} batches, this run "
                f"uses {self.window}: resuming inside a window needs the same window"
            )
        self.loader.load_state_dict(state["inner"])
        self._reset()
        self._skip = int(state["taken"])

    def close(self) -> None:
        """Commit exactly the handed-out samples of a partly used window (see the module docstring)."""
        if self._start is not None and self._taken < len(self._batches):
            handed = [s for b in self._batches[: self._taken] for s in b]
            self.loader.load_state_dict(_mark(self._start, self.dataset.rank, handed, True))
        self._reset()
        self.loader.close()
