"""The ``idgenrec`` recipe's TrainModule: alternate training of the ID generator and the T5 recommender (IDGenRec §2.5).

Engines: ``recommender`` (a :class:`SoftIDRecommender` around a seq2seq model) and ``id_generator`` (a
seq2seq model, item text -> textual ID); both share ONE tokenizer/vocabulary (checked), which is what makes
``softmax(generator logits) @ E_recommender`` meaningful. The plan is an optional ``warmup`` phase, then
``rounds`` x ``order`` (default [``id``, ``rec``]; paper: 1 ID epoch, 10 rec epochs, 3 rounds):

* ``rec``: the generator frozen; the recommender teacher-forced on prompts of the current ID table
  (eq. 4), labels -100 padded, loader padding samples masked.
* ``id``: the recommender frozen (``set_trainable(False)``) and in eval mode; for each distinct history
  item of the batch the generator, teacher-forced on the item's current ID tokens, gives per-step logits;
  ``softmax`` (not the reference's log-softmax) of them are spliced as soft ID embeddings at exactly that
  item's prompt token positions (eq. 5); the target stays hard; gradients reach only the generator, through
  DeepSpeed's backward of the generator engine (no ``model.module(...)`` bypass: ranks stay in sync).
  The generator's lr is ``id_lr`` (default 1e-4): the paper's 1e-8 does not move a T5 measurably.
* after each ``id`` phase: a new ID table by diverse ID generation (Algorithm 1) from the generator's
  gathered weights, run on every rank (ZeRO-3: every rank joins the gather) and checked by table hash
  across ranks; the trie and every ID-dependent collator are rebuilt (new loaders carry the table version);
  the table (with its round) is module state, so every checkpoint carries it. On W ranks each rank runs 1/W
  of the generation jobs and one all-gather shares the results (``ShardedRunner``).

User IDs (``prompt.use_user_id``, paper §2.1 / Table 6): a textual profile per (user, history prefix), built
only from the items before the sample's target (no leakage; rule and generation in
``trainer/idgen/user_ids.py``). ``initial_ids = "title"`` starts from title user IDs (most frequent title
words); every regeneration after an ID phase (and ``initial_ids = "generator"``) rebuilds them with the same
generator weights as the item table; the user table is module state (every checkpoint), saved as
``id_tables/users-<version>.json`` and used by training, validation, ``evaluate`` and the Ray scorer. In
the ID phase the user ID's tokens stay hard tokens: eq. 5 interpolates soft embeddings "for each item in
the user history" only, so the generator learns from item IDs alone (a user ID is a derived profile).

Initial IDs (``initial_ids``): ``"generator"`` runs Algorithm 1 with the initial generator (the paper's
pretrained tag generator); ``"title"`` takes the first words of each item title, deduplicated by
lengthening/suffixing (our offline stand-in: a random tiny generator would emit noise). With ``"title"``,
``warmup_steps > 0`` first distils the table into the generator (seq2seq text -> ID, at ``warmup_lr``) so
that IDs regenerated after the first ID phase stay close to meaningful words instead of jumping to noise.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from fusionrec.data_pipeline.loader import LoaderConfig, ShardDataset
from fusionrec.trainer.config import OptimConfig
from fusionrec.trainer.decoding import CompiledTrie
from fusionrec.trainer.idgen.id_table import IDTable
from fusionrec.trainer.idgen.user_ids import UserIDTable
from fusionrec.trainer.models.seq2seq import build_seq2seq
from fusionrec.trainer.models.soft_ids import SoftIDRecommender
from fusionrec.trainer.models.tokenizer import load_tokenizer
from fusionrec.trainer.module_base import BaseTrainModule, BatchStats, Phase
from fusionrec.trainer.prompts import STYLES, build_prompt
from fusionrec.trainer.recipes.idgenrec.artefacts import evaluate, set_trie_softmax, table_from_state
from fusionrec.trainer.recipes.idgenrec.config import IDGenRecConfig
from fusionrec.trainer.recipes.idgenrec.data import (
    ItemBatches,
    encodable_fn,
    load_items,
    text_to_id_batch,
    title_table,
)
from fusionrec.trainer.recipes.idgenrec.loaders import BucketedTrainLoader, TrainLoader, ValidLoader
from fusionrec.trainer.recipes.idgenrec.loss import shift_right, trie_token_nll
from fusionrec.trainer.recipes.idgenrec.tables import IDTables
from fusionrec.trainer.recipes.idgenrec.tokenizer import (
    check_shared_vocab,
    materialize_tokenizer,
    tokenizer_files,
    tokenizer_sha,
)
from fusionrec.trainer.strategy import DeepspeedStrategy, Engine
from fusionrec.trainer.tokens import IGNORE_INDEX, token_nll

log = logging.getLogger(__name__)
ENGINES = {"id": "id_generator", "rec": "recommender", "warmup": "id_generator"}


# ---------------------------------------------------------------------- the module
class IDGenRecModule(IDTables, BaseTrainModule):
    """TrainModule of the idgenrec recipe (see the module docstring)."""

    main_engine = "recommender"

    def __init__(self, cfg: IDGenRecConfig, run_dir: str | Path) -> None:
        if not cfg.data.corpus:
            raise ValueError(
                "idgenrec.data.corpus is empty: give a prepared corpus folder (fusionrec prepare)"
            )
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.texts, self.titles = load_items(cfg.data.corpus)
        self.engines: dict[str, Engine] = {}
        self.table: IDTable | None = None
        self.tokens: dict[str, list[int]] = {}
        self.history: list[str] = []  # versions of every table this run used, oldest first
        self.user_table: UserIDTable | None = None  # prompt.use_user_id only
        self.user_history: list[str] = []
        self._histories: dict[str, tuple[str, ...]] | None = None  # user key -> sample history
        self.stats: dict[str, int] = {"regenerations": 0, "table_mismatch": 0}
        self._trie: CompiledTrie | None = None
        self._trie_dev: CompiledTrie | None = None  # self.trie on the engines' device (trie_softmax)
        self._loader: TrainLoader | BucketedTrainLoader | None = None

    # ------------------------------------------------------------------ setup
    def configure(self, strategy: DeepspeedStrategy, optim: OptimConfig) -> dict[str, Engine]:
        self.strategy = strategy
        self.tokenizer, self.tokenizer_files = self._materialize_tokenizer()
        rec = build_seq2seq(self.cfg.recommender, tokenizer=self.tokenizer)
        set_trie_softmax(rec, self.cfg.trie_softmax)  # how its scores are decoded (beam search reads it)
        gen = build_seq2seq(self.cfg.id_generator, tokenizer=self.tokenizer)
        check_shared_vocab(rec, gen, self.tokenizer)
        self.rec_start = int(rec.config.decoder_start_token_id)
        self.gen_start = int(gen.config.decoder_start_token_id)
        self.engines = {
            "recommender": strategy.prepare(SoftIDRecommender(rec), optim, name="recommender"),
            "id_generator": strategy.prepare(
                gen, dataclasses.replace(optim, lr=self.cfg.id_lr), name="id_generator"
            ),
        }
        self.train_data = self.split_dataset("train", even_batches=True)
        return self.engines

    def _materialize_tokenizer(self) -> tuple[Any, dict[str, str]]:
        """Rank 0 trains (or copies, or reduces) the tokenizer into RUN/tokenizer once; every rank loads it."""
        folder = self.run_dir / "tokenizer"
        if self.strategy.is_rank0 and not (folder / "tokenizer.json").is_file():
            materialize_tokenizer(self.cfg, folder, self.texts, self._vocab_texts)
        self.strategy.barrier()
        return load_tokenizer(folder), tokenizer_files(folder)

    def _vocab_texts(self, full: Any) -> list[str]:
        """Every text the run will tokenize besides generated IDs: item texts, each prompt template (filled
        around a placeholder ID), the initial title IDs (lower-cased words the titles may not contain as
        such) and the digits of number suffixes. Title IDs are chosen with the full tokenizer; the reduced
        one tokenizes them identically (verified), so the run picks the very same table."""
        users = [None, "0"] if self.cfg.prompt.use_user_id else [None]
        prompts = [
            build_prompt(["0 1"], t, user, style=style).text
            for style, ts in STYLES.items()
            for t in range(len(ts))
            for user in users
        ]
        digits = [" ".join("0123456789")]
        ids: list[str] = []
        if self.cfg.initial_ids == "title":
            ids = list(title_table(self.titles, self.cfg.title_words, encodable_fn(full)).as_dict().values())
            if self.cfg.prompt.use_user_id:
                ids += sorted(set(self._title_users(full).as_dict().values()))
        elif self.cfg.initial_ids == "collab":
            ids = list(self.collab_table(full).as_dict().values())
        return list(self.texts.values()) + prompts + digits + ids

    def split_dataset(self, split: str, even_batches: bool) -> ShardDataset:
        cap = self.cfg.data.max_train_samples if split == "train" else self.cfg.data.max_valid_samples
        cfg = LoaderConfig(
            seed=self.cfg.data.seed,
            splits=[split],
            shuffle=split == "train",
            max_samples=cap,
            batch_size=self.strategy.batch_plan.micro_batch_size,
            even_batches=even_batches,
            num_workers=self.cfg.data.num_workers,
        )
        return ShardDataset(
            self.cfg.data.corpus, cfg, rank=self.strategy.rank, world_size=self.strategy.world_size
        )

    def val_loader(self, split: str = "valid") -> Iterable[dict[str, torch.Tensor]]:
        """For ``Trainer(val_loader=...)``: batches of ``split`` under the current table at every pass."""
        return ValidLoader(self, split)

    def local_model(self, name: str) -> torch.nn.Module:
        """A plain (non-DeepSpeed) copy of an engine's full weights (collective: gathers ZeRO-3 shards)."""
        weights = self.strategy.full_state_dict(self.engines[name])
        cfg = self.cfg.recommender if name == "recommender" else self.cfg.id_generator
        model = build_seq2seq(cfg, tokenizer=self.tokenizer)
        target = SoftIDRecommender(model) if name == "recommender" else model
        target.load_state_dict(weights)
        if name == "recommender":
            set_trie_softmax(model, self.cfg.trie_softmax)
        return model.eval()

    # ------------------------------------------------------------------ phases
    def plan(self, max_steps: int) -> list[Phase]:
        phases = []
        if self.cfg.warmup_steps:
            phases.append(Phase("warmup", ENGINES["warmup"], steps=self.cfg.warmup_steps))
        for r in range(self.cfg.rounds):
            phases += [Phase(n, ENGINES[n], round=r, **self.cfg.phase_length(n)) for n in self.cfg.order]
        return phases

    def on_phase_start(self, phase: Phase) -> Iterable[Any]:
        self._ensure_table()
        for name, engine in sorted(self.engines.items()):
            engine.set_trainable(name == phase.engine)
            engine.train(name == phase.engine)  # the frozen model runs in eval mode (no dropout)
        if self._loader is not None:
            self._loader.close()
            self._loader = None
        if phase.engine == "id_generator" and self.cfg.warmup_lr > 0:  # at every phase start: a resume too
            warm = phase.name == "warmup"
            self.engines["id_generator"].set_base_lr(self.cfg.warmup_lr if warm else self.cfg.id_lr)
        if phase.name == "warmup":
            make = text_to_id_batch(
                self.tokenizer, self.texts, self.tokens, self.cfg.data.collate.max_source_len
            )
            plan = self.strategy.batch_plan
            return ItemBatches(
                list(self.texts),
                make,
                plan.micro_batch_size,
                self.strategy.rank,
                self.strategy.world_size,
                self.cfg.data.seed,
            )
        collate, window = self.collator(phase.name, self.train_data), self.cfg.data.bucket_window
        if window > 1:
            self._loader = BucketedTrainLoader(self.train_data, collate, window, self.cfg.data.seed)
        else:
            self._loader = TrainLoader(self.train_data, collate)
        return self._loader

    def on_phase_end(self, phase: Phase) -> None:
        if phase.name == "id":
            self._regenerate(round=phase.round + 1)
            self.stats["regenerations"] += 1
            log.info(
                "round %d: regenerated ID table %s (%s)", phase.round, self.table.version, self.table.stats
            )

    # ------------------------------------------------------------------ steps
    def _rec_logits(self, batch: Mapping[str, torch.Tensor], soft: dict[str, torch.Tensor]) -> torch.Tensor:
        """The recommender's teacher-forced logits: [B, T, V], or [B, T, C] over the trie's emitted tokens
        when `_restricted` (the trie softmax reads no other column)."""
        engine = self.engines["recommender"]
        dec = shift_right(batch["labels"], self.rec_start, self.tokenizer.pad_token_id)
        if soft:
            # ZeRO-3: the embedding module's forward pre-hook resets its "gradients remaining" counter on
            # every call, so the soft (grad-carrying) lookup must be the module's LAST call of the forward or
            # its post-backward release never runs and the shared weight stays "active" (a later gather then
            # fails). Embedding the decoder input first, and passing it as embeddings, ensures that.
            soft = {**soft, "decoder_inputs_embeds": engine.module.embedding(dec)}
        else:
            soft = {"decoder_input_ids": dec}
        if self._restricted():
            soft["output_columns"] = self._device_trie(dec.device).emitted_tokens
        out = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **soft)
        return out.logits

    def _restricted(self) -> bool:
        """Whether the loss reads only the trie's emitted tokens' logits, so the head computes only those:
        the trie softmax on a T5 recommender whose weights are not ZeRO-3 partitioned (ColumnHead)."""
        engine = self.engines["recommender"]
        cfg = self.cfg
        t5 = engine.module.config.model_type == "t5"
        return cfg.trie_softmax and cfg.emitted_head and engine.zero_stage < 3 and t5

    def _device_trie(self, device: torch.device) -> CompiledTrie:
        if self._trie_dev is None or self._trie_dev.device != device:
            self._trie_dev = self.trie.to(device)
        return self._trie_dev

    def _rec_nll(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.cfg.trie_softmax:
            return token_nll(logits, labels)
        return trie_token_nll(logits, labels, self._device_trie(labels.device), self._restricted())

    def soft_ids(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """softmax of the generator's teacher-forced logits, one row per soft prompt token (eq. 5)."""
        logits = self.engines["id_generator"](
            input_ids=batch["gen_input_ids"],
            attention_mask=batch["gen_attention_mask"],
            decoder_input_ids=batch["gen_decoder_input_ids"],
        ).logits
        item, step = batch["soft_item_step"][:, 0], batch["soft_item_step"][:, 1]
        probs = torch.softmax(logits[item, step].float(), dim=-1)
        return {"soft_probs": probs, "soft_index": batch["soft_index"]}

    def train_batch(self, batch: Mapping[str, torch.Tensor], phase: Phase) -> dict[str, torch.Tensor]:
        if phase.name == "warmup":
            dec = shift_right(batch["labels"], self.gen_start, self.tokenizer.pad_token_id)
            logits = self.engines["id_generator"](
                input_ids=batch["gen_input_ids"],
                attention_mask=batch["gen_attention_mask"],
                decoder_input_ids=dec,
            ).logits
            nll, n = token_nll(logits, batch["labels"])
            return {"loss": nll / n.clamp(min=1)}
        soft = self.soft_ids(batch) if phase.name == "id" else {}
        nll, n = self._rec_nll(self._rec_logits(batch, soft), batch["labels"])
        out = {"loss": nll / n.clamp(min=1)}
        if soft:  # how peaked the soft IDs are: 1.0 = one-hot (= the hard IDs)
            out["soft_max_prob"] = soft["soft_probs"].detach().max(dim=-1).values.mean()
        return out

    @torch.no_grad()
    def eval_batch(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        nll, n = self._rec_nll(self._rec_logits(batch, {}), batch["labels"])
        return {"loss_sum": nll.double(), "count": n.double(), "samples": batch["real"].sum().double()}

    def batch_stats(self, batch: Mapping[str, torch.Tensor]) -> BatchStats:
        mask = batch.get("attention_mask", batch.get("gen_attention_mask"))
        tokens = int(mask.sum()) + int((batch["labels"] != IGNORE_INDEX).sum())
        return BatchStats(samples=int(batch["real"].sum()), tokens=tokens)

    # ------------------------------------------------------------------ ranking evaluation
    def evaluate_split(self, split: str = "valid") -> dict[str, float]:
        """HR/NDCG@k of ``split`` users by constrained beam search, exact over all ranks (collective)."""
        model = self.local_model("recommender")
        dataset = self.split_dataset(split, even_batches=False)
        samples = (s for s in dataset if not s["_pad"])
        if self.cfg.eval.max_users:
            share = -(-self.cfg.eval.max_users // self.strategy.world_size)
            samples = (s for i, s in zip(range(share), samples, strict=False))
        sums = evaluate(
            model,
            self.tokenizer,
            self.table,
            self.trie,
            samples,
            self.cfg.eval,
            self.cfg.prompt,
            self.tokens,
            users=self.user_table,
        )
        return sum(self.strategy.all_gather_object(sums)).to_dict()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        assert self.table is not None, "state_dict before the first phase started"
        return {
            "table": {
                "ids": self.table.as_dict(),
                "round": self.table.round,
                "sha256": self.table.hash,
                "stats": dict(self.table.stats),
            },
            "history": list(self.history),
            "user_table": self.user_table.to_state() if self.user_table is not None else None,
            "user_history": list(self.user_history),
            "stats": dict(self.stats),
            "recommender_config": dataclasses.asdict(self.cfg.recommender),
            "trie_softmax": self.cfg.trie_softmax,
            "id_generator_config": dataclasses.asdict(self.cfg.id_generator),
            "tokenizer_files": dict(self.tokenizer_files),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        users = state.get("user_table")  # absent in checkpoints written before user IDs existed
        if (users is not None) != self.cfg.prompt.use_user_id:
            raise ValueError(
                f"checkpoint {'has' if users is not None else 'has no'} user ID table but "
                f"idgenrec.prompt.use_user_id = {str(self.cfg.prompt.use_user_id).lower()}; resume with the "
                "setting the run was trained with"
            )
        if bool(state.get("trie_softmax", False)) != self.cfg.trie_softmax:
            raise ValueError(
                f"checkpoint was trained with idgenrec.trie_softmax = {str(not self.cfg.trie_softmax).lower()}"
                " but the config says otherwise; resume with the setting the run was trained with"
            )
        if tokenizer_sha(state["tokenizer_files"]) != tokenizer_sha(self.tokenizer_files):
            raise ValueError(
                "checkpoint was trained with another tokenizer than RUN/tokenizer; refusing to resume"
            )
        for key, cfg in (
            ("recommender_config", self.cfg.recommender),
            ("id_generator_config", self.cfg.id_generator),
        ):
            if state[key] != dataclasses.asdict(cfg):
                raise ValueError(f"checkpoint {key} {state[key]} != current {dataclasses.asdict(cfg)}")
        table = table_from_state(state["table"])
        self.history, self.stats = list(state["history"])[:-1], dict(state["stats"])
        self._set_table(table)
        if users is not None:
            self.user_history = list(state.get("user_history", []))[:-1]
            self._set_user_table(UserIDTable.from_state(users))


def build_idgenrec_module(cfg: IDGenRecConfig, run_dir: str | Path) -> IDGenRecModule:
    """The recipe's TrainModule; pass ``module.val_loader()`` as the Trainer's val_loader."""
    return IDGenRecModule(cfg, run_dir)

