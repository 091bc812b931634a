"""SASRec's TrainModule: one engine ("model"), one phase of ``epochs`` epochs, exact validation HR/NDCG@10."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from fusionrec.trainer.config import OptimConfig
from fusionrec.trainer.metrics import hit_at_k, ndcg_at_k
from fusionrec.trainer.models.sasrec import SASRec, SASRecConfig
from fusionrec.trainer.module_base import BaseTrainModule, BatchStats, Phase
from fusionrec.trainer.recipes.sasrec.config import SASRecRecipeConfig
from fusionrec.trainer.recipes.sasrec.loss import sasrec_loss
from fusionrec.trainer.strategy import DeepspeedStrategy, Engine

VAL_K = 10


class SASRecModule(BaseTrainModule):
    def __init__(self, cfg: SASRecRecipeConfig, item_ids: list[str], seed: int = 0) -> None:
        self.cfg, self.item_ids, self.seed = cfg, list(item_ids), seed
        self.model_config = SASRecConfig(
            len(item_ids), cfg.max_len, cfg.hidden, cfg.num_blocks, cfg.num_heads, cfg.dropout
        )
        self.engines: dict[str, Engine] = {}

    def build_model(self) -> SASRec:
        torch.manual_seed(self.seed)
        return SASRec(self.model_config)

    def configure(self, strategy: DeepspeedStrategy, optim: OptimConfig) -> dict[str, Engine]:
        self.engines = {"model": strategy.prepare(self.build_model(), optim, name="model")}
        return self.engines

    def plan(self, max_steps: int) -> list[Phase]:
        return [Phase(name="train", engine="model", epochs=self.cfg.epochs)]

    def train_batch(self, batch: Mapping[str, torch.Tensor], phase: Phase) -> dict[str, torch.Tensor]:
        hidden, weights = self.engines["model"](batch["inp"])
        return {"loss": sasrec_loss(hidden, weights, batch["lab"], batch.get("neg"))}

    def eval_batch(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sums of HR@10 and NDCG@10 over the batch's real rows (weight 1), all items ranked."""
        model = self.engines["model"].module
        scores = model.full_scores(batch["inp"])
        hit = scores.topk(VAL_K, dim=1).indices == batch["target"].unsqueeze(1)
        ranks = torch.where(hit.any(dim=1), hit.float().argmax(dim=1), -1)  # -1: not in the top VAL_K
        weight = batch["weight"].double()
        return {
            f"HR@{VAL_K}_sum": (hit_at_k(ranks, VAL_K) * weight).sum(),
            f"NDCG@{VAL_K}_sum": (ndcg_at_k(ranks, VAL_K) * weight).sum(),
            "count": batch["weight"].sum(),
        }

    def batch_stats(self, batch: Mapping[str, torch.Tensor]) -> BatchStats:
        return BatchStats(samples=int(batch["inp"].shape[0]), tokens=int((batch["lab"] >= 0).sum()))

    def state_dict(self) -> dict[str, Any]:
        """What a scorer needs besides the weights: the item vocabulary (row i = item i) and the model config."""
        return {"item_ids": self.item_ids, "model_config": dataclasses.asdict(self.model_config)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state.get("item_ids", [])) != self.item_ids:
            raise ValueError("checkpoint: SASRec item vocabulary differs from this run's dataset")
        if state.get("model_config") != dataclasses.asdict(self.model_config):
            raise ValueError(f"checkpoint: SASRec model config {state.get('model_config')} != this run's")
