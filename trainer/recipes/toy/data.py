"""The toy recipe's data: a seeded regression problem, a seq2seq reversal task, and ``ToyBatches``, a
resumable, rank-sharded micro-batch loader (epoch-seeded permutation, per-rank cursor,
``state_dict/load_state_dict``) standing in for data_pipeline's ShardDataset.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch


def make_regression(n: int, d_in: int, d_out: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ N(0, 1); y = teacher(x) + 0.01 noise, all from one seeded generator (same on every rank)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    w1, w2 = torch.randn(d_in, 32, generator=g) / d_in**0.5, torch.randn(32, d_out, generator=g) / 32**0.5
    y = torch.tanh(x @ w1) @ w2 + 0.01 * torch.randn(n, d_out, generator=g)
    return x, y


class ToyBatches:
    """Rank-sharded micro-batches over a dict of equally long tensors; one ``iter()`` = the rest of the current epoch.

    Rank r of R takes positions r, r+R, ... of the epoch's permutation (seed + epoch), so the ranks
    partition every epoch; the tail that does not fill a micro-batch on every rank is counted in
    ``dropped_per_epoch`` (reported, not silent).
    """

    def __init__(
        self,
        data: Mapping[str, torch.Tensor],
        micro_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        if micro_batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad micro_batch_size={micro_batch_size} or rank={rank}/{world_size}")
        self.data = dict(data)
        n = len(next(iter(self.data.values())))
        if any(len(v) != n for v in self.data.values()):
            raise ValueError(
                f"ToyBatches: tensors of different lengths {[len(v) for v in self.data.values()]}"
            )
        self.n = n
        self.micro, self.rank, self.world, self.seed = micro_batch_size, rank, world_size, seed
        self.batches_per_epoch = n // (micro_batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{n} samples cannot fill one micro-batch of {micro_batch_size} on {world_size} ranks"
            )
        self.dropped_per_epoch = n - self.batches_per_epoch * micro_batch_size * world_size
        self.epoch, self.cursor = 0, 0

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        mine = perm[self.rank :: self.world]
        while self.cursor < self.batches_per_epoch:
            idx = mine[self.cursor * self.micro : (self.cursor + 1) * self.micro]
            self.cursor += 1  # advanced before yielding: the state always counts handed-out batches
            yield {k: v[idx] for k, v in self.data.items()}
        self.epoch, self.cursor = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "world": self.world}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if state["seed"] != self.seed or state["world"] != self.world:
            raise ValueError(
                f"loader state for seed={state['seed']}/world={state['world']} != {self.seed}/{self.world}"
            )
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])


def make_reversal(n: int, vocab: int = 64, length: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seq2seq task: target = the source reversed. Token ids 2..vocab-1 (0 = pad, 1 = eos)."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(2, vocab, (n, length), generator=g)
    return {"input_ids": src, "attention_mask": torch.ones_like(src), "labels": src.flip(1)}
