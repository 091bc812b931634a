"""The ID tables of an IDGenRec run, as a part of its TrainModule: the item table (and the user table with
``prompt.use_user_id``), their regeneration by Algorithm 1 after each ID phase (agreed across ranks), the
trie and the collators bound to the current tables. Mixed into :class:`module.IDGenRecModule`, whose
attributes (cfg, strategy, tokenizer, texts, titles, run_dir, stats, ...) it uses."""

from __future__ import annotations

import logging
from typing import Any

import torch
from fusionrec.data_pipeline.loader import ShardDataset
from fusionrec.trainer.decoding import CompiledTrie
from fusionrec.trainer.idgen.candidates import LocalGenerator, ShardedRunner
from fusionrec.trainer.idgen.collab_ids import collab_table
from fusionrec.trainer.idgen.generator import generate_ids
from fusionrec.trainer.idgen.id_table import IDTable
from fusionrec.trainer.idgen.user_ids import (
    UserIDTable,
    generate_user_table,
    title_user_table,
    user_histories,
)
from fusionrec.trainer.prompts import PromptBuilder
from fusionrec.trainer.recipes.idgenrec.artefacts import build_trie
from fusionrec.trainer.recipes.idgenrec.data import (
    IDGenRecCollator,
    all_samples,
    encodable_fn,
    id_tokens,
    title_table,
)

log = logging.getLogger(__name__)


class IDTables:
    """ID-table state and its updates (see the module docstring)."""

    def _ensure_table(self) -> None:
        if self.table is not None:
            return
        if self.cfg.initial_ids == "title":
            self._set_table(title_table(self.titles, self.cfg.title_words, encodable_fn(self.tokenizer)))
            if self.cfg.prompt.use_user_id:
                self._set_user_table(self._title_users(self.tokenizer))
        elif self.cfg.initial_ids == "collab":
            self._set_table(self._agreed(self.collab_table(self.tokenizer)))
        else:
            self._regenerate(round=0)

    def user_histories(self) -> dict[str, tuple[str, ...]]:
        """Every sample's (user key -> history), read once from all splits of the corpus."""
        if self._histories is None:
            self._histories = user_histories(all_samples(self.cfg.data.corpus))
        return self._histories

    def collab_table(self, tokenizer: Any) -> IDTable:
        """The collaborative initial table (collab_ids.py), built from the TRAINING split only."""
        train = all_samples(self.cfg.data.corpus, splits=["train"])
        return collab_table(train, self.titles, encodable_fn(tokenizer), self.cfg.collab_branching,
                            self.cfg.collab_dim, seed=self.cfg.data.seed)  # fmt: skip

    def _title_users(self, tokenizer: Any) -> UserIDTable:
        words, encodable = self.cfg.user_title_words, encodable_fn(tokenizer)
        return title_user_table(self.user_histories(), self.titles, words, encodable)

    def _regenerate(self, round: int) -> None:
        """New item (and user) tables from ONE gather of the generator weights, on every rank; ranks must
        agree on each table's hash."""
        local = self.local_model("id_generator")
        runner = LocalGenerator(local, self.tokenizer, self.cfg.idgen, self.texts)
        world = self.strategy.world_size
        if world > 1:  # each rank runs 1/world of the jobs; all ranks then replay the same walk
            runner = ShardedRunner(runner, self.strategy.rank, world, self.strategy.all_gather_object)
        with torch.no_grad():
            table = generate_ids(
                local, self.tokenizer, self.texts, self.cfg.idgen, round=round, runner=runner
            )
        self._set_table(self._agreed(table))
        if self.cfg.prompt.use_user_id:
            histories, words = self.user_histories(), self.cfg.user_title_words
            users = generate_user_table(
                local, self.tokenizer, histories, self.texts, self.titles, self.cfg.idgen, words, round=round
            )
            self._set_user_table(self._agreed(users))

    def _agreed(self, table: IDTable | UserIDTable) -> IDTable | UserIDTable:
        """``table`` when every rank built the same; else rank 0's (nondeterministic GPU kernels), visibly."""
        hashes = self.strategy.all_gather_object(table.hash)
        if len(set(hashes)) == 1:
            return table
        log.warning(
            "%s differ across ranks (%s); using rank 0's", type(table).__name__, [h[:12] for h in hashes]
        )
        self.stats["table_mismatch"] += 1
        if isinstance(table, UserIDTable):
            return UserIDTable.from_state(self.strategy.broadcast_object(table.to_state()))
        ids, stats = self.strategy.broadcast_object((table.as_dict(), table.stats))
        return IDTable(ids, "generative", table.round, stats)

    def _set_table(self, table: IDTable) -> None:
        self.table, self.tokens = table, id_tokens(table, self.tokenizer)
        self._trie = self._trie_dev = None  # rebuilt lazily from the new table
        self.history.append(table.version)
        if self.strategy.is_rank0:
            table.save(self.run_dir / "id_tables" / f"{table.version}.json")

    def _set_user_table(self, table: UserIDTable) -> None:
        self.user_table = table
        self.user_history.append(table.version)
        log.info("user ID table %s: %s", table.version, table.stats)
        if self.strategy.is_rank0:
            table.save(self.run_dir / "id_tables" / f"users-{table.version}.json")

    @property
    def trie(self) -> CompiledTrie:
        if self._trie is None:
            self._trie = build_trie(self.table, self.tokens, self.rec_start, self.tokenizer.eos_token_id)
        return self._trie

    def collator(self, mode: str, dataset: ShardDataset) -> IDGenRecCollator:
        """A collator bound to the current table (rebuilt whenever the table changes)."""
        self._ensure_table()
        users = self.user_table.as_dict() if self.user_table is not None else None
        version = self.table.version + (f"+{self.user_table.version}" if self.user_table is not None else "")
        return IDGenRecCollator(
            mode,
            self.tokenizer,
            PromptBuilder(self.cfg.prompt, self.table.as_dict(), users),
            self.tokens,
            version,
            texts=self.texts,
            cfg=self.cfg.data.collate,
            epoch=lambda: dataset.epoch,
            decoder_start=self.gen_start,
        )
