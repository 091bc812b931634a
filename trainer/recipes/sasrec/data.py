"""SASRec's data: per-user item sequences, and resumable batches of them for the Trainer.

Leave-one-out (DESIGN.md): a user's training part is items[:-2], the validation target items[-2] (history
items[:-2]), the test target items[-1]. :class:`SequenceBatches` deals each epoch's length-sorted batches to
the ranks (exactly once per epoch; a trailing batch that cannot go to every rank is dropped and counted) and
saves/restores its cursor; :class:`ValidBatches` gives every rank the same number of batches (padding rows
carry weight 0), as the Trainer's exact validation requires.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from fusionrec.trainer.models.sasrec import left_pad


def load_corpus(path: str | Path) -> tuple[pa.Table, list[str], str]:
    """(sequences table, item vocabulary, dataset name) from a `sequences.parquet` file / processed dataset
    folder, or a raw P5 folder (`user_sequence.txt` + `item_plain_text.txt`, read with read_p5)."""
    path = Path(path)
    if path.is_dir() and (path / "user_sequence.txt").exists():
        from fusionrec.data_pipeline.preprocess import build_sequences
        from fusionrec.data_pipeline.readers import read_p5

        raw = read_p5(path)
        return build_sequences(raw.interactions), raw.items["item_id"].to_pylist(), raw.name
    seq_path = path / "sequences.parquet" if path.is_dir() else path
    if not seq_path.exists():
        raise FileNotFoundError(f"{path}: neither a sequences.parquet nor a P5 folder (user_sequence.txt)")
    seqs = pq.read_table(seq_path)
    items_path = seq_path.with_name("items.parquet")
    vocab = (
        pq.read_table(items_path, columns=["item_id"])["item_id"].to_pylist()
        if items_path.exists()
        else sorted({i for s in seqs["item_ids"].to_pylist() for i in s})
    )
    return seqs, vocab, seq_path.parent.name


def train_sequences(sequences: pa.Table, item_ids: list[str]) -> list[np.ndarray]:
    """Each user's training part items[:-2] as item indices (users with < 3 items contribute nothing)."""
    return [s[:-2] for s in _indexed(sequences, item_ids)]


def valid_pairs(sequences: pa.Table, item_ids: list[str]) -> tuple[list[np.ndarray], np.ndarray]:
    """(histories items[:-2], targets items[-2]) of every user with >= 3 items."""
    seqs = [s for s in _indexed(sequences, item_ids) if len(s) >= 3]
    return [s[:-2] for s in seqs], np.asarray([s[-2] for s in seqs], dtype=np.int64)


def _indexed(sequences: pa.Table, item_ids: list[str]) -> list[np.ndarray]:
    index = {item: i for i, item in enumerate(item_ids)}
    out = []
    for user, seq in zip(sequences["user_id"].to_pylist(), sequences["item_ids"].to_pylist(), strict=True):
        try:
            out.append(np.asarray([index[i] for i in seq], dtype=np.int64))
        except KeyError as err:
            raise ValueError(f"user {user!r}: item {err.args[0]!r} is missing from the item table") from None
    return out


def length_sorted_batches(
    train: list[np.ndarray], users: np.ndarray, batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Shuffled batches of similar length (sorted inside chunks of 32 batches): trimmed batches stay short."""
    perm = rng.permutation(users)
    chunk = 32 * batch_size
    batches = []
    for lo in range(0, len(perm), chunk):
        part = perm[lo : lo + chunk]
        part = part[np.argsort([len(train[u]) for u in part], kind="stable")]
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def negatives(
    seqs: list[np.ndarray], lab: torch.Tensor, num_items: int, rng: np.random.Generator
) -> np.ndarray:
    """One negative per labelled position, uniform among items the user never interacted with (the paper)."""
    rows = np.nonzero(lab.numpy() >= 0)[0]
    neg = rng.integers(0, num_items, size=len(rows))
    seen = [set(s.tolist()) for s in seqs]
    for i, (r, n) in enumerate(zip(rows, neg, strict=True)):
        while n in seen[r]:
            n = rng.integers(0, num_items)
        neg[i] = n
    return neg


def sequence_batch(seqs: list[np.ndarray], max_len: int) -> dict[str, torch.Tensor]:
    """Inputs items[:-1] and next-item labels items[1:] (-1 = no label), left-padded and trimmed."""
    return {
        "inp": left_pad([s[:-1] for s in seqs], max_len),
        "lab": left_pad([s[1:] for s in seqs], max_len, shift=0, fill=-1),
    }


class SequenceBatches:
    """Resumable training batches: epoch e's batches come from rng (seed, e); batch i goes to rank i % world."""

    def __init__(
        self,
        train: list[np.ndarray],
        num_items: int,
        batch_size: int,
        max_len: int,
        rank: int,
        world_size: int,
        seed: int = 0,
        with_negatives: bool = False,
    ) -> None:
        self.train, self.num_items, self.batch_size, self.max_len = train, num_items, batch_size, max_len
        self.rank, self.world, self.seed, self.with_negatives = rank, world_size, seed, with_negatives
        self.users = np.asarray([u for u, s in enumerate(train) if len(s) >= 2], dtype=np.int64)
        if len(self.users) == 0:
            raise ValueError("no user has >= 2 training items (items[:-2]); nothing to train SASRec on")
        self.epoch, self.cursor = 0, 0

    def _mine(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = length_sorted_batches(self.train, self.users, self.batch_size, rng)
        usable = len(batches) - len(batches) % self.world  # every rank the same count
        return batches[self.rank : usable : self.world]

    def __len__(self) -> int:
        n = -(-len(self.users) // self.batch_size)
        return n // self.world

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        mine = self._mine()
        while self.cursor < len(mine):
            seqs = [self.train[u] for u in mine[self.cursor]]
            batch = sequence_batch(seqs, self.max_len)
            if self.with_negatives:
                rng = np.random.default_rng([self.seed, self.epoch, self.rank, self.cursor])
                batch["neg"] = torch.from_numpy(negatives(seqs, batch["lab"], self.num_items, rng))
            self.cursor += 1  # advanced before yielding: the state always counts handed-out batches
            yield batch
        self.epoch, self.cursor = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "world": self.world}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["seed"]) != self.seed or int(state["world"]) != self.world:
            raise ValueError(
                f"SASRec loader state for seed={state['seed']}/world={state['world']} != {self.seed}/{self.world}"
            )
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])


class ValidBatches:
    """Validation users split into equal contiguous shares; each rank yields the same number of batches."""

    def __init__(self, histories: list[np.ndarray], targets: np.ndarray, batch_size: int, max_len: int,
                 rank: int, world_size: int) -> None:  # fmt: skip
        share = -(-len(targets) // world_size)
        self.hist, self.targets = (
            histories[rank * share : (rank + 1) * share],
            targets[rank * share : (rank + 1) * share],
        )
        self.batches = -(-share // batch_size)
        self.batch_size, self.max_len = batch_size, max_len

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for b in range(self.batches):
            lo, hi = b * self.batch_size, (b + 1) * self.batch_size
            hist, tgt = self.hist[lo:hi], self.targets[lo:hi]
            n = len(tgt)
            rows = list(hist) if n else [np.zeros(1, dtype=np.int64)]  # an empty share: one weight-0 row
            weight = torch.zeros(len(rows))
            weight[:n] = 1.0
            targets = np.concatenate([tgt, np.zeros(len(rows) - n, dtype=np.int64)])
            yield {"inp": left_pad(rows, self.max_len), "target": torch.from_numpy(targets), "weight": weight}
