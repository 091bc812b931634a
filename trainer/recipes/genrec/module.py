"""The ``genrec`` recipe's TrainModule (paper 000): cloze pretraining, then finetuning with ``[MASK]`` appended, on one
BART engine with user/item ID embeddings; evaluation = trie-constrained beam search, top-20 items.

Phases (one engine, ``"model"``; the Trainer walks them in order and resumes inside either):

* ``pretrain``: one item of each user's training sequence masked (``data.ClozeCollate``), trained
  to generate it. ``pretrain_epochs = pretrain_steps = 0`` skips it (the paper's "w/o pretraining" ablation).
* ``finetune``: next-item prediction on ``finetune_splits`` (default the leave-one-out train samples).

Loss: token-level cross entropy over the target item's tokens + eos; label padding is ``-100`` and loader
padding samples (``_pad``) have no labels at all. A micro-batch without any label gives loss 0 (not NaN),
so a rank whose last batch is all padding still takes part in the step.

``eval_batch`` returns exact sums (``HR@k_sum``, ``NDCG@k_sum``, ``count``) for the Trainer's validation;
``evaluate(batch)`` returns a mergeable :class:`MetricSums` for the Ray evaluator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from fusionrec.data_pipeline.loader import LoaderConfig, ShardDataset, ShardLoader
from fusionrec.trainer.config import OptimConfig
from fusionrec.trainer.decoding import BeamResult, CompiledTrie, constrained_beam_search
from fusionrec.trainer.metrics import MetricSums
from fusionrec.trainer.models.genrec import GenRecForConditionalGeneration
from fusionrec.trainer.models.seq2seq import build_seq2seq
from fusionrec.trainer.models.tokenizer import build_tokenizer
from fusionrec.trainer.module_base import BaseTrainModule, BatchStats, Phase
from fusionrec.trainer.recipes.genrec.config import GenRecConfig
from fusionrec.trainer.recipes.genrec.data import (
    ClozeCollate,
    FinetuneCollate,
    GenRecVocab,
    SequenceEncoder,
    id_words,
    prepare_tokenizer,
)
from fusionrec.trainer.strategy import DeepspeedStrategy, Engine
from fusionrec.trainer.tokens import IGNORE_INDEX, token_cross_entropy
from transformers.models.bart.modeling_bart import shift_tokens_right


class GenRecModule(BaseTrainModule):
    """TrainModule of the genrec recipe (see the module docstring)."""

    main_engine = "model"

    def __init__(
        self,
        cfg: GenRecConfig,
        corpus_dir: str | Path,
        vocab: GenRecVocab,
        tokenizer: Any,
        loader: LoaderConfig | None = None,
    ) -> None:
        self.cfg, self.corpus_dir, self.vocab = cfg, Path(corpus_dir), vocab
        self.tokenizer = prepare_tokenizer(tokenizer)
        self.encoder = SequenceEncoder(self.tokenizer, vocab, cfg.data)
        self.loader_cfg = loader or LoaderConfig(
            seed=cfg.seed, shuffle=cfg.shuffle, num_workers=cfg.num_workers
        )
        self.engine: Engine | None = None
        self.trie: CompiledTrie | None = None
        self.strategy: DeepspeedStrategy | None = None
        self.skipped: dict[str, int] = {}

    # ------------------------------------------------------------------ model
    def build_model(self) -> GenRecForConditionalGeneration:
        """BART (tiny or pretrained) + ID tables; vocabulary sized by the tokenizer (incl. [MASK])."""
        bart = build_seq2seq(self.cfg.model, tokenizer=self.tokenizer)
        return GenRecForConditionalGeneration.from_bart(
            bart, self.vocab.num_users, self.vocab.num_items, seed=self.cfg.model.seed
        )

    def configure(self, strategy: DeepspeedStrategy, optim: OptimConfig) -> dict[str, Engine]:
        self.strategy = strategy
        model = self.build_model()
        conf = model.config
        self.trie = CompiledTrie.build(
            self.encoder.item_token_sequences(),
            decoder_start_token_id=conf.decoder_start_token_id,
            eos_token_id=conf.eos_token_id,
        ).to(strategy.device)
        self.engine = strategy.prepare(model, optim, name=self.main_engine)
        return {self.main_engine: self.engine}

    @property
    def model(self) -> GenRecForConditionalGeneration:
        if self.engine is None:
            raise RuntimeError("GenRecModule.configure() has not run")
        return self.engine.module

    # ------------------------------------------------------------------ phases and data
    def plan(self, max_steps: int) -> list[Phase]:
        return [Phase(name=n, engine=self.main_engine, **length) for n, length in self.cfg.phase_lengths()]

    def on_phase_start(self, phase: Phase) -> ShardLoader:
        self.engine.set_trainable(True)
        self.engine.train()
        return self.train_loader(phase.name)

    def _rank_world(self) -> tuple[int, int]:
        """This process' rank; also right before ``configure`` (e.g. building the Trainer's val_loader after
        ``strategy.setup()``), when only the process group exists."""
        if self.strategy is not None:
            return self.strategy.rank, self.strategy.world_size
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def train_loader(self, phase: str) -> ShardLoader:
        """The rank's loader of a phase: cloze samples for ``pretrain``, next-item samples for ``finetune``."""
        if self.strategy is None:
            raise RuntimeError("GenRecModule.train_loader needs configure() first (micro-batch size, rank)")
        rank, world = self._rank_world()
        micro = self.strategy.batch_plan.micro_batch_size
        if phase == "pretrain":
            splits = ["valid"] if self.cfg.data.pretrain_source == "sequences" else ["train"]
            collate: Any = ClozeCollate(self.encoder, seed=self.cfg.seed)
        elif phase == "finetune":
            splits, collate = list(self.cfg.finetune_splits), FinetuneCollate(self.encoder)
        else:
            raise ValueError(f"genrec has phases 'pretrain' and 'finetune', not {phase!r}")
        cfg = dataclasses.replace(
            self.loader_cfg,
            splits=splits,
            datasets=list(self.cfg.datasets),
            batch_size=micro,
            even_batches=True,
        )
        return ShardLoader(ShardDataset(self.corpus_dir, cfg, rank=rank, world_size=world), collate)

    def eval_loader(self, split: str | None = None) -> ShardLoader:
        """Evaluation samples of ``split`` (default ``eval_split``), padded so every rank has the same count."""
        rank, world = self._rank_world()
        cfg = dataclasses.replace(
            self.loader_cfg,
            splits=[split or self.cfg.eval_split],
            datasets=list(self.cfg.datasets),
            batch_size=self.cfg.eval_batch_size,
            shuffle=False,
            even_batches=True,
            max_samples=self.cfg.eval_max_samples or None,
        )
        dataset = ShardDataset(self.corpus_dir, cfg, rank=rank, world_size=world)
        return ShardLoader(dataset, FinetuneCollate(self.encoder, with_eval=True))

    def val_loader(self, split: str | None = None) -> Iterable[dict[str, torch.Tensor]]:
        """For ``Trainer(val_loader=...)``, which iterates it at every validation: a fresh `eval_loader` per
        pass. One ShardLoader is one pass (it records what it consumed, for exactly-once resumption), so
        reusing it made every validation after the first empty."""
        return _EachPass(lambda: self.eval_loader(split))

    # ------------------------------------------------------------------ training
    def train_batch(self, batch: Mapping[str, torch.Tensor], phase: Phase) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        conf = self.model.config
        out = self.engine(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            user_index=batch["user_index"],
            item_index=batch["item_index"],
            decoder_input_ids=shift_tokens_right(labels, conf.pad_token_id, conf.decoder_start_token_id),
            use_cache=False,
        )
        loss = token_cross_entropy(out.logits, labels)
        for key in ("truncated_items", "empty_sequences"):
            if key in batch:
                self.skipped[key] = self.skipped.get(key, 0) + int(batch[key])
        return {"loss": loss, "label_tokens": (labels != IGNORE_INDEX).sum().double()}

    def batch_stats(self, batch: Mapping[str, torch.Tensor]) -> BatchStats:
        real = batch["is_real"]
        return BatchStats(samples=int(real.sum()), tokens=int(batch["attention_mask"][real].sum()))

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def recommend(self, batch: Mapping[str, torch.Tensor]) -> BeamResult:
        """Top-``top_k`` distinct items (trie indices = vocabulary row - 1) per query, by beam search."""
        bound = self.model.bind(batch["user_index"], batch["item_index"])
        exclude = batch["history_items"] if self.cfg.exclude_history else None
        return constrained_beam_search(
            bound,
            batch["input_ids"],
            batch["attention_mask"],
            self.trie,
            num_beams=self.cfg.num_beams,
            top_k=self.cfg.top_k,
            exclude_items=exclude,
        )

    def evaluate(self, batch: Mapping[str, torch.Tensor]) -> MetricSums:
        """Mergeable rank histogram of the batch's real (non-padding) queries."""
        real = batch["is_real"]
        result = self.recommend(batch)
        return MetricSums.from_topk(result.items[real], batch["target_items"][real], ks=self.cfg.eval_ks)

    def eval_batch(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        sums = self.evaluate(batch)
        if sums.count == 0:
            return {"count": torch.tensor(0.0)}
        metrics = sums.to_dict()
        out = {f"{k}_sum": torch.tensor(v * sums.count) for k, v in metrics.items() if k != "count"}
        out["count"] = torch.tensor(float(sums.count))
        return out

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The ID vocabulary (row <-> user/item) travels with every checkpoint, plus the skip counters."""
        return {"vocab": self.vocab.state_dict(), "skipped": dict(self.skipped)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = GenRecVocab.from_state_dict(state["vocab"])
        if saved.sha256 != self.vocab.sha256:
            raise ValueError(
                f"checkpoint's GenRec vocabulary ({saved.num_users} users, {saved.num_items} items) differs "
                f"from this corpus' ({self.vocab.num_users} users, {self.vocab.num_items} items): the ID "
                "embedding rows would name different users/items"
            )
        self.skipped = dict(state.get("skipped", {}))


class _EachPass:
    """An iterable that calls `make()` for a new iterator at every `iter()`."""

    def __init__(self, make: Callable[[], Iterable[Any]]) -> None:
        self.make = make

    def __iter__(self) -> Iterator[Any]:
        return iter(self.make())


def build_genrec_module(
    cfg: GenRecConfig,
    corpus_dir: str | Path,
    *,
    loader: LoaderConfig | None = None,
    tokenizer: Any = None,
    vocab: GenRecVocab | None = None,
) -> GenRecModule:
    """The module for ``fusionrec train genrec``: vocabulary from the corpus (all splits scanned once),
    tokenizer from the model / a folder / trained on the ID words, model built later in ``configure``."""
    vocab = vocab or GenRecVocab.from_corpus(corpus_dir, cfg.datasets)
    if tokenizer is None:
        if cfg.tokenizer_from_model:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(cfg.model.name_or_path)
        else:
            tokenizer = build_tokenizer(cfg.tokenizer, corpus=id_words(vocab, cfg.data))
    return GenRecModule(cfg, corpus_dir, vocab, tokenizer, loader)
