"""`fusionrec train toy`: module.py's ToyModule on 512 seeded regression samples."""

from __future__ import annotations

from typing import Any

from fusionrec.trainer.worker import Built


def build(cfg: Any, strategy: Any) -> Built:
    from fusionrec.trainer.recipes.toy.data import ToyBatches, make_regression
    from fusionrec.trainer.recipes.toy.module import ToyModule

    x, y = make_regression(512, 16, 4, seed=cfg.train.seed)
    loader = ToyBatches(
        {"x": x, "y": y}, cfg.train.deepspeed.micro_batch_size, strategy.rank, strategy.world_size
    )
    return Built(module=ToyModule(), train_loader=loader)
