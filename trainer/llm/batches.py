"""Per-rank micro-batches of a small in-memory dataset, shared by the LLM-ranker recipes (dmpo, palr)."""

from __future__ import annotations

import random


class EpochBatches:
    """Per-rank micro-batches of a small in-memory dataset: seeded shuffle per epoch, rank r takes every
    world-th example, then fixed-size batches. Every rank gets the same number of batches (the tail that
    does not fill a batch on every rank is counted in `dropped_per_epoch`, not silently lost)."""

    def __init__(
        self, examples: list, collate, batch_size: int, rank: int = 0, world: int = 1, seed: int = 0
    ):
        if batch_size < 1 or not 0 <= rank < world:
            raise ValueError(f"batch_size={batch_size}, rank={rank}, world={world} invalid")
        per_rank = len(examples) // world
        self.n_batches = per_rank // batch_size
        if self.n_batches == 0:
            raise ValueError(
                f"{len(examples)} examples cannot give one batch of {batch_size} on {world} ranks"
            )
        self.dropped_per_epoch = len(examples) - self.n_batches * batch_size * world
        self.examples, self.collate, self.batch_size = examples, collate, batch_size
        self.rank, self.world, self.seed, self.epoch = rank, world, seed, 0

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self):
        order = list(range(len(self.examples)))
        random.Random(self.seed + self.epoch).shuffle(order)
        mine = order[self.rank :: self.world]
        self.epoch += 1
        for b in range(self.n_batches):
            yield self.collate(
                [self.examples[i] for i in mine[b * self.batch_size : (b + 1) * self.batch_size]]
            )

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
