"""IDGenRec's loaders: training batches bound to one collator (plain or length-bucketed, resumable on any
topology), and validation batches rebuilt from the module's current ID table at every pass."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from fusionrec.data_pipeline.loader import ShardDataset, ShardLoader, gather_state
from fusionrec.trainer.bucketing import BucketedLoader
from fusionrec.trainer.recipes.idgenrec.data import IDGenRecCollator


class TrainLoader:
    """A ShardLoader bound to one collator; its state is gathered over ranks (resumable on any topology)."""

    def __init__(self, dataset: ShardDataset, collate: IDGenRecCollator) -> None:
        self.collate = collate
        self.loader = ShardLoader(dataset, collate)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return gather_state(self.loader.state_dict())  # collective: every rank saves the merged state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "bucket_window" in state:
            raise ValueError(
                "loader state was saved with length bucketing (idgenrec.data.bucket_window="
                f"{state['bucket_window']}); resume with the same setting"
            )
        self.loader.load_state_dict(state)

    def close(self) -> None:
        self.loader.close()


class BucketedTrainLoader(BucketedLoader):
    """Length-bucketed training batches (``idgenrec.data.bucket_window`` > 1), see trainer/bucketing.py."""

    def __init__(self, dataset: ShardDataset, collate: IDGenRecCollator, window: int, seed: int) -> None:
        super().__init__(dataset, collate, collate.prompt_cost, window, seed)


class ValidLoader:
    """Validation batches built from the module's *current* ID table at every pass (never stale)."""

    def __init__(self, module: Any, split: str) -> None:
        self.module, self.split = module, split
        self.dataset: ShardDataset | None = None  # built at the first pass (needs the configured module)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.dataset is None:
            self.dataset = self.module.split_dataset(self.split, even_batches=True)
        dataset = self.dataset
        dataset.set_epoch(0)  # every pass is the whole split
        loader = ShardLoader(dataset, self.module.collator("eval", dataset))
        try:
            yield from loader
        finally:
            loader.close()
