"""The `dmpo` recipe's TrainModule: SFT (stage "sft") then DMPO (stage "dmpo") of a causal-LM ranker with LoRA.

Two runs, as in the paper (SFT, then DMPO from the SFT model): the SFT run exports a merged HF folder, the
DMPO run loads it as its base (`model.name_or_path`) and trains a fresh LoRA on top. Because LoRA's B matrix
starts at zero, the policy at step 0 IS the SFT model, so the reference log-probs can be computed with the
policy engine itself before the first step (`dmpo.reference = "precomputed"`, no second model in memory), or
by a frozen reference model built from the same folder (`"model"`: a ZeRO-3 engine,
or a plain replica under ZeRO-0/1/2, see `_reference_model`). Either way the loss at step 0 is ln 2.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from fusionrec.trainer.config import OptimConfig
from fusionrec.trainer.llm.batches import EpochBatches
from fusionrec.trainer.llm.export import export_engine
from fusionrec.trainer.llm.memory import check_model_fits
from fusionrec.trainer.llm.scoring import answer_logprobs, collate_pairs, score_pairs, sft_loss
from fusionrec.trainer.models.causal_lm import build_causal_lm, build_ranker
from fusionrec.trainer.module_base import BaseTrainModule, BatchStats, Phase
from fusionrec.trainer.recipes.dmpo.config import DMPORecipeConfig
from fusionrec.trainer.recipes.dmpo.data import (
    TruncationStats,
    encode_groups,
    encode_record,
    group_records,
    load_dmpo_file,
)
from fusionrec.trainer.recipes.dmpo.loss import (
    collate_groups,
    dmpo_loss,
    flatten_groups,
    group_logps,
    split_flat,
)
from fusionrec.trainer.strategy import DeepspeedStrategy, Engine


class DMPOModule(BaseTrainModule):
    """TrainModule of the dmpo recipe (see the module docstring)."""

    main_engine = "policy"

    def __init__(self, cfg: DMPORecipeConfig) -> None:
        self.cfg = cfg
        self.truncation = TruncationStats()
        self.engines: dict[str, Engine] = {}
        self.reference: torch.nn.Module | Engine | None = None  # dmpo.reference = "model" only
        self.examples: list[Any] = []

    # ------------------------------------------------------------------ setup
    def configure(self, strategy: DeepspeedStrategy, optim: OptimConfig) -> Mapping[str, Engine]:
        self.strategy = strategy
        local = int(os.environ.get("LOCAL_WORLD_SIZE", strategy.world_size))
        plan = strategy.batch_plan
        # Fail before loading weights when the model cannot fit (e.g. a 7B config on this CPU box).
        check_model_fits(
            self.cfg.model, strategy.world_size, local, strategy.cfg.zero_stage, plan.micro_batch_size
        )
        model, self.tokenizer = build_ranker(self.cfg.model)
        self.engines["policy"] = strategy.prepare(model, optim, name="policy")
        if self.cfg.stage == "sft":
            self.examples = self._sft_examples()
        else:
            self.examples = encode_groups(
                self.tokenizer, self._groups(), self.cfg.model.max_length, self.truncation
            )
            if self.cfg.dmpo.reference == "model":
                self.reference = self._reference_model()
            else:
                self._precompute_reference()
        return self.engines

    def _reference_model(self) -> torch.nn.Module | Engine:
        """The frozen reference (SFT) model: a ZeRO-3 engine, or a plain frozen replica below stage 3.

        ZeRO-1/2 shard only optimizer states and gradients, which a frozen model has none of, so every rank
        holds the full reference either way; DeepSpeed also refuses a stage-1/2 engine without an optimizer.
        Under ZeRO-3 the engine partitions the weights (gathered layer by layer by its hooks).
        """
        ref = build_causal_lm(self.cfg.model, vocab_size=len(self.tokenizer))
        if self.strategy.cfg.zero_stage == 3:
            self.engines["reference"] = self.strategy.prepare(ref, None, name="reference")
            return self.engines["reference"]
        return ref.requires_grad_(False).eval().to(self.strategy.device)

    def _sft_examples(self) -> list[Any]:
        records = load_dmpo_file(self.cfg.sft_file)
        records = records[: self.cfg.limit or None]
        max_len = self.cfg.model.max_length
        return [encode_record(self.tokenizer, r, r.chosen, max_len, self.truncation) for r in records]

    def _groups(self) -> list[Any]:
        groups = group_records(load_dmpo_file(self.cfg.dpo_file), self.cfg.dmpo.k, self.cfg.dpo_file)
        return groups[: self.cfg.limit or None]

    def _precompute_reference(self) -> None:
        """log π_ref for every group with the policy at init (== SFT model), split over ranks then gathered.

        Every rank runs the same number of forward passes (ZeRO-3 gathers parameters collectively), so the
        list is padded to a multiple of the world size; padded results are discarded.
        """
        s, groups = self.strategy, self.examples
        padded = groups + groups[: (-len(groups)) % s.world_size]
        mine = padded[s.rank :: s.world_size]
        policy = self.engines["policy"]
        totals = score_pairs(policy, flatten_groups(mine), self.tokenizer.pad_token_id).total
        chosen, rejected = split_flat(totals, self.cfg.dmpo.k)
        parts = s.all_gather_object((chosen.tolist(), rejected.tolist()))
        for r, (c_list, r_list) in enumerate(parts):
            for j, (c, rej) in enumerate(zip(c_list, r_list, strict=True)):
                idx = r + j * s.world_size
                if idx < len(groups):
                    groups[idx].ref_chosen, groups[idx].ref_rejected = c, rej

    # ------------------------------------------------------------------ loop hooks
    def plan(self, max_steps: int) -> list[Phase]:
        return [Phase(name=self.cfg.stage, engine="policy", epochs=self.cfg.epochs)]

    def on_phase_start(self, phase: Phase) -> EpochBatches:
        pad = self.tokenizer.pad_token_id
        collate = (
            partial(collate_pairs, pad_id=pad)
            if self.cfg.stage == "sft"
            else partial(collate_groups, pad_id=pad)
        )
        plan = self.strategy.batch_plan
        return EpochBatches(
            self.examples,
            collate,
            plan.micro_batch_size,
            self.strategy.rank,
            self.strategy.world_size,
            seed=self.cfg.model.seed,
        )

    def train_batch(self, batch: dict[str, torch.Tensor], phase: Phase) -> dict[str, torch.Tensor]:
        policy = self.engines["policy"]
        if self.cfg.stage == "sft":
            return {"loss": sft_loss(answer_logprobs(policy, batch))}
        k = self.cfg.dmpo.k
        chosen, rejected = group_logps(policy, batch, k)
        if self.reference is not None:
            with torch.no_grad():
                ref_chosen, ref_rejected = group_logps(self.reference, batch, k)
        else:
            ref_chosen, ref_rejected = batch["ref_chosen"], batch["ref_rejected"]
        out = dmpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.cfg.dmpo.beta)
        margin = (out.chosen_reward - out.rejected_reward).mean()
        return {"loss": out.loss, "reward_accuracy": out.accuracy, "reward_margin": margin}

    def batch_stats(self, batch: dict[str, torch.Tensor]) -> BatchStats:
        groups = batch["input_ids"].shape[0] // (1 if self.cfg.stage == "sft" else 1 + self.cfg.dmpo.k)
        return BatchStats(samples=groups, tokens=int(batch["attention_mask"].sum()))

    def state_dict(self) -> dict[str, Any]:
        return {"truncation": self.truncation.as_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.truncation = TruncationStats(**state.get("truncation", {}))

    # ------------------------------------------------------------------ export
    def export(self, out_dir: str | Path) -> Path | None:
        """Merged HF folder of the policy (LoRA folded in); collective — call on every rank."""
        return export_engine(self.strategy, self.engines["policy"], self.cfg.model, out_dir)
