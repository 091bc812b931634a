"""Recipe builders for `fusionrec train`: each turns the root config into (module, loaders).

A builder receives the whole config tree and the ready strategy, and hands every component only its own
section. Builders import their recipe lazily so `fusionrec train dmpo` never imports GenRec code.
"""

from __future__ import annotations

from fusionrec.launch.config import Config
from fusionrec.launch.train import Built


def build_toy(cfg: Config, strategy) -> Built:
    """The engine's smoke-test recipe: an MLP regressor on a seeded problem (no data needed)."""
    from fusionrec.trainer.modules.toy import ToyBatches, ToyModule, make_regression

    x, y = make_regression(512, 16, 4, seed=cfg.train.seed)
    loader = ToyBatches(
        {"x": x, "y": y}, cfg.train.deepspeed.micro_batch_size, strategy.rank, strategy.world_size
    )
    return Built(module=ToyModule(), train_loader=loader)
