"""A tiny but real TrainModule for engine tests and ``bench train``.

* ``ToyModule`` trains an MLP regressor on a fixed, seeded regression problem (targets from a random
  2-layer teacher + noise), so losses fall measurably within a few steps. With ``two_stage=True`` it holds
  two engines, ``encoder`` and ``head`` (y = head(encoder(x))), and alternates phases that train one with
  the other frozen - the same shape as IDGenRec's ID-generator/recommender alternation.
* ``ToySeq2SeqModule``: a tiny T5 learning to reverse token sequences (export test, ``bench train``).
* Data (``make_regression``, ``make_reversal``, ``ToyBatches``): data.py beside this file.

``python -m fusionrec.trainer.recipes.toy.module --out DIR`` trains it under any launcher (deepspeed,
torchrun, launch/multinode.sh) and writes ``DIR/rank-<r>.json`` with the losses and a fingerprint of the
weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from fusionrec.fileio import atomic_write_text
from fusionrec.trainer.config import OptimConfig
from fusionrec.trainer.module_base import BaseTrainModule, BatchStats, Phase
from fusionrec.trainer.recipes.toy.data import ToyBatches, make_regression
from fusionrec.trainer.strategy import DeepspeedStrategy, Engine
from torch import nn


class ToyRegressor(nn.Module):
    def __init__(self, d_in: int = 16, hidden: int = 64, d_out: int = 4) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.LayerNorm(hidden))
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


class ToyModule(BaseTrainModule):
    """MSE regression; one engine ("model"), or two alternating engines ("encoder", "head")."""

    def __init__(
        self,
        d_in: int = 16,
        hidden: int = 64,
        d_out: int = 4,
        two_stage: bool = False,
        stage_steps: int = 2,
        seed: int = 0,
    ) -> None:
        self.dims = (d_in, hidden, d_out)
        self.two_stage, self.stage_steps, self.seed = two_stage, stage_steps, seed
        self.engines: dict[str, Engine] = {}
        self.phase_starts: list[str] = []  # module state: proves state_dict round-trips through checkpoints

    def configure(self, strategy: DeepspeedStrategy, optim: OptimConfig) -> dict[str, Engine]:
        torch.manual_seed(self.seed)
        net = ToyRegressor(*self.dims)
        if self.two_stage:
            self.engines = {
                "encoder": strategy.prepare(net.encoder, optim, name="encoder"),
                "head": strategy.prepare(net.head, optim, name="head"),
            }
        else:
            self.engines = {"model": strategy.prepare(net, optim, name="model")}
        return self.engines

    def plan(self, max_steps: int) -> list[Phase]:
        if not self.two_stage:
            return super().plan(max_steps)
        rounds = -(-max_steps // (2 * self.stage_steps))
        return [
            Phase(name=name, engine=name, steps=self.stage_steps, round=r)
            for r in range(rounds)
            for name in ("encoder", "head")
        ]

    def on_phase_start(self, phase: Phase) -> None:
        self.phase_starts.append(f"{phase.name}@{phase.round}")
        for name, engine in self.engines.items():
            engine.set_trainable(name == phase.engine)
            engine.train(name == phase.engine)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        if self.two_stage:
            return self.engines["head"](self.engines["encoder"](x))
        return self.engines["model"](x)

    def train_batch(self, batch: Mapping[str, torch.Tensor], phase: Phase) -> dict[str, torch.Tensor]:
        pred = self.predict(batch["x"])
        loss = nn.functional.mse_loss(pred, batch["y"])
        return {"loss": loss, "mae": (pred - batch["y"]).abs().mean().detach()}

    def eval_batch(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        err = (self.predict(batch["x"]) - batch["y"]).pow(2).mean(dim=1)
        return {"loss_sum": err.sum(), "count": torch.tensor(float(len(err)))}

    def batch_stats(self, batch: Mapping[str, torch.Tensor]) -> BatchStats:
        return BatchStats(samples=len(batch["x"]), tokens=0)

    def state_dict(self) -> dict[str, Any]:
        return {"phase_starts": list(self.phase_starts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phase_starts = list(state["phase_starts"])


class ToySeq2SeqModule(BaseTrainModule):
    """A tiny T5 (HF ``T5ForConditionalGeneration``, random init) learning to reverse token sequences.

    Real transformer, real cross-entropy, tied embeddings (the case ENVIRONMENT.md says zero_to_fp32
    --safe_serialization breaks on): used by the export test and for tokens/s in ``bench train``.
    """

    def __init__(self, vocab: int = 64, d_model: int = 32, layers: int = 1, seed: int = 0) -> None:
        self.vocab, self.d_model, self.layers, self.seed = vocab, d_model, layers, seed
        self.engines: dict[str, Engine] = {}

    def build_model(self) -> nn.Module:
        from transformers import T5Config, T5ForConditionalGeneration

        cfg = T5Config(
            vocab_size=self.vocab,
            d_model=self.d_model,
            d_kv=self.d_model // 2,
            d_ff=2 * self.d_model,
            num_layers=self.layers,
            num_decoder_layers=self.layers,
            num_heads=2,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
            tie_word_embeddings=True,
        )
        torch.manual_seed(self.seed)
        return T5ForConditionalGeneration(cfg)

    def configure(self, strategy: DeepspeedStrategy, optim: OptimConfig) -> dict[str, Engine]:
        self.engines = {"model": strategy.prepare(self.build_model(), optim, name="model")}
        return self.engines

    def train_batch(self, batch: Mapping[str, torch.Tensor], phase: Phase) -> dict[str, torch.Tensor]:
        return {"loss": self.engines["model"](**batch).loss}

    def batch_stats(self, batch: Mapping[str, torch.Tensor]) -> BatchStats:
        tokens = int(batch["attention_mask"].sum()) + int((batch["labels"] != -100).sum())
        return BatchStats(samples=len(batch["input_ids"]), tokens=tokens)


def weights_fingerprint(strategy: DeepspeedStrategy, engines: Mapping[str, Engine]) -> str:
    """sha256 over every engine's full (ZeRO-3-gathered) weights: equal strings = identical weights."""
    h = hashlib.sha256()
    for name, engine in sorted(engines.items()):
        for key, t in sorted(strategy.full_state_dict(engine).items()):
            h.update(name.encode() + key.encode())
            h.update(t.float().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> None:
    from fusionrec.trainer.callbacks import HistoryCallback
    from fusionrec.trainer.config import DeepSpeedConfig, TrainConfig
    from fusionrec.trainer.loop import Trainer

    p = argparse.ArgumentParser(description="Train the toy module (any launcher) and report per-rank results")
    p.add_argument("--out", required=True)
    p.add_argument("--zero-stage", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher; unused")
    args = p.parse_args(argv)
    ds = DeepSpeedConfig(zero_stage=args.zero_stage, micro_batch_size=args.micro_batch)
    cfg = TrainConfig(
        run_dir=args.out,
        max_steps=args.steps,
        log_every=1,
        tensorboard=False,
        progress=False,
        deepspeed=ds,
        optim=OptimConfig(lr=1e-2),
    )
    strategy = DeepspeedStrategy(ds)
    strategy.setup()
    x, y = make_regression(512, 16, 4)
    history = HistoryCallback()
    module = ToyModule()
    loader = ToyBatches({"x": x, "y": y}, args.micro_batch, strategy.rank, strategy.world_size)
    Trainer(cfg, strategy, module, loader, [history]).fit()
    result = {
        "rank": strategy.rank,
        "world_size": strategy.world_size,
        "node_env": {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR")},
        "losses": [log["train/loss"] for log in history.logs],
        "fingerprint": weights_fingerprint(strategy, module.engines),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"rank-{strategy.rank}.json", json.dumps(result))
    strategy.teardown()


if __name__ == "__main__":
    main()
