"""The `palr` recipe's TrainModule: instruction fine-tuning of a causal-LM ranker on "Recommend" +
"Recommend_Retrieval".

Data: a processed dataset folder (`items.parquet` with item_id/text, `sequences.parquet` with
user_id/item_ids — the data_pipeline contract). The fine-tuning users (paper: 20%) get both tasks; the
candidates of Recommend_Retrieval are the targets plus items from the retriever. `retriever = "sasrec"`
(the default, the paper's retrieval layer) is built by the launch layer (`launch/palr_retriever.py`: a saved
SASRec, or one trained on the corpus' training split) and passed in as `retriever=`, since trainer/ must not
import cluster/; "cooccurrence" and "popular" need no training and are built here.
Loss: cross-entropy on answer tokens only. Evaluation (`rerank.rerank_eval`) re-ranks the
retriever's top-50 and reports HR/NDCG@k against the retriever alone.
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
from fusionrec.trainer.llm.scoring import answer_logprobs, collate_pairs, encode_pair, sft_loss
from fusionrec.trainer.models.causal_lm import build_ranker
from fusionrec.trainer.module_base import BaseTrainModule, Phase
from fusionrec.trainer.recipes.palr.config import PALRRecipeConfig
from fusionrec.trainer.recipes.palr.rerank import Cooccurrence, MostPopular, Retriever, training_examples
from fusionrec.trainer.strategy import DeepspeedStrategy, Engine


def load_processed(data_dir: str | Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """sequences (user → items, time order) and item text (the item id where it has none)."""
    from fusionrec.data_pipeline.records import read_processed

    sequences, text = read_processed(data_dir, "text")
    return sequences, {i: (t or i) for i, t in text.items()}


class PALRModule(BaseTrainModule):
    """TrainModule of the palr recipe."""

    main_engine = "ranker"

    def __init__(self, cfg: PALRRecipeConfig, retriever: Retriever | None = None) -> None:
        if retriever is None and cfg.retriever == "sasrec":
            raise ValueError(
                "palr.retriever='sasrec' is built by the launch layer (fusionrec train palr); in-process "
                "callers pass PALRModule(cfg, retriever=...) or choose palr.retriever='cooccurrence'"
            )
        self.cfg = cfg
        self.retriever = retriever
        self.engines: dict[str, Engine] = {}
        self.skipped = {"too_long": 0}

    def configure(self, strategy: DeepspeedStrategy, optim: OptimConfig) -> Mapping[str, Engine]:
        self.strategy = strategy
        local = int(os.environ.get("LOCAL_WORLD_SIZE", strategy.world_size))
        plan = strategy.batch_plan
        check_model_fits(
            self.cfg.model, strategy.world_size, local, strategy.cfg.zero_stage, plan.micro_batch_size
        )
        self.sequences, self.text = load_processed(self.cfg.data_dir)
        if self.retriever is None:
            train_seqs = [seq[:-2] for seq in self.sequences.values()]
            kind = Cooccurrence if self.cfg.retriever == "cooccurrence" else MostPopular
            self.retriever = kind(train_seqs)
        model, self.tokenizer = build_ranker(self.cfg.model)
        self.examples = self._encode(
            training_examples(self.sequences, self.text, self.retriever, self.cfg.palr)
        )
        self.engines["ranker"] = strategy.prepare(model, optim, name="ranker")
        return self.engines

    def _encode(self, pairs: list[tuple[str, str]]) -> list[Any]:
        """Tokenise; a sample longer than the context is counted in `skipped['too_long']`, never hidden."""
        out = []
        for i, (prompt, ans) in enumerate(pairs):
            try:
                out.append(
                    encode_pair(self.tokenizer, prompt, ans, self.cfg.model.max_length, where=f"palr {i}")
                )
            except ValueError:
                self.skipped["too_long"] += 1
        if not out:
            raise ValueError(f"no PALR sample fits model.max_length={self.cfg.model.max_length}")
        return out

    def plan(self, max_steps: int) -> list[Phase]:
        return [Phase(name="palr", engine="ranker", epochs=self.cfg.epochs)]

    def on_phase_start(self, phase: Phase) -> EpochBatches:
        collate = partial(collate_pairs, pad_id=self.tokenizer.pad_token_id)
        s = self.strategy
        return EpochBatches(self.examples, collate, s.batch_plan.micro_batch_size, s.rank, s.world_size)

    def train_batch(self, batch: dict[str, torch.Tensor], phase: Phase) -> dict[str, torch.Tensor]:
        return {"loss": sft_loss(answer_logprobs(self.engines["ranker"], batch))}

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": dict(self.skipped)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = dict(state.get("skipped", self.skipped))

    def export(self, out_dir: str | Path) -> Path | None:
        """Merged HF folder of the ranker (LoRA folded in); collective — call on every rank."""
        return export_engine(self.strategy, self.engines["ranker"], self.cfg.model, out_dir)
