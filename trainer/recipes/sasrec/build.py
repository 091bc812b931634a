"""`fusionrec train sasrec`: the root config -> SASRecModule + its loaders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fusionrec.trainer.worker import Built


def build(cfg: Any, strategy: Any) -> Built:
    """SASRec on one dataset: resumable sequence batches, exact validation HR/NDCG@10 on items[-2]."""
    from fusionrec.trainer.recipes.sasrec.data import (
        SequenceBatches,
        ValidBatches,
        load_corpus,
        train_sequences,
        valid_pairs,
    )
    from fusionrec.trainer.recipes.sasrec.module import SASRecModule

    sc = cfg.section("sasrec")
    seqs, items, _ = load_corpus(_sasrec_data(cfg, sc.data))
    micro, rank, world = cfg.train.deepspeed.micro_batch_size, strategy.rank, strategy.world_size
    train = SequenceBatches(
        train_sequences(seqs, items),
        len(items),
        micro,
        sc.max_len,
        rank,
        world,
        cfg.train.seed,
        sc.loss == "bce",
    )
    hist, targets = valid_pairs(seqs, items)
    if sc.val_users:
        hist, targets = hist[: sc.val_users], targets[: sc.val_users]
    val = ValidBatches(hist, targets, sc.val_batch_size, sc.max_len, rank, world)
    return Built(module=SASRecModule(sc, items, cfg.train.seed), train_loader=train, val_loader=val)


def _sasrec_data(cfg: Any, data: str) -> Path:
    """`sasrec.data`, else the corpus's only processed dataset (ValueError naming them when several)."""
    if data:
        return Path(data)
    found = sorted(
        p for p in (cfg.corpus_dir() / "processed").glob("*") if (p / "sequences.parquet").is_file()
    )
    if len(found) != 1:
        raise ValueError(
            f"sasrec.data is empty and {cfg.corpus_dir()}/processed holds {len(found)} datasets "
            f"({', '.join(p.name for p in found)}); set sasrec.data=CORPUS/processed/NAME"
        )
    return found[0]
