"""Recipe builders for `fusionrec train`: each turns the root config into (module, loaders).

A builder receives the whole config tree and the ready strategy, and hands every component only its own
section. Builders import their recipe lazily so `fusionrec train dmpo` never imports GenRec code.
"""

from __future__ import annotations

from pathlib import Path

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


def build_sasrec(cfg: Config, strategy) -> Built:
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


def _sasrec_data(cfg: Config, data: str) -> Path:
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


def build_genrec(cfg: Config, strategy) -> Built:
    """GenRec (BART + user/item ID embeddings): its phases bring their own loaders; validation = beam search."""
    from fusionrec.trainer.modules.genrec import build_genrec_module

    module = build_genrec_module(cfg.section("genrec"), cfg.corpus_dir(), loader=cfg.section("loader"))
    return Built(module=module, train_loader=[], val_loader=module.eval_loader())


def models_genrec(cfg: Config) -> dict:
    from fusionrec.trainer.modules.genrec import build_genrec_module

    module = build_genrec_module(cfg.section("genrec"), cfg.corpus_dir(), loader=cfg.section("loader"))
    return {"model": module.build_model()}, {"model": module.tokenizer}


def build_idgenrec(cfg: Config, strategy) -> Built:
    """IDGenRec alternate training: phases build their loaders (the ID table changes between phases)."""
    from fusionrec.trainer.modules.idgenrec import build_idgenrec_module

    module = build_idgenrec_module(_required(cfg, "idgenrec"), cfg.train.run_dir)
    return Built(module=module, train_loader=[], val_loader=module.val_loader())


def _required(cfg: Config, name: str):
    section = getattr(cfg, name)
    if section is None:
        raise ValueError(f"the {name} recipe needs a [{name}] section (e.g. --config {name}_tiny)")
    return section


def build_dmpo(cfg: Config, strategy) -> Built:
    """DMPO (paper 003): stage `sft`, then stage `dmpo` from the merged SFT export (frozen reference)."""
    from fusionrec.trainer.modules.dmpo import DMPOModule

    return Built(module=DMPOModule(_required(cfg, "dmpo")), train_loader=[])


def build_palr(cfg: Config, strategy) -> Built:
    """PALR (paper 002): retrieval candidates -> instruction-tuned LLM ranker.

    The default retriever, SASRec, lives in cluster/ (trainer/ must not import it): built here, from
    `palr.retriever_checkpoint` or trained once on the corpus' training split (launch/palr_retriever.py).
    """
    from fusionrec.trainer.modules.palr import PALRModule

    recipe = _required(cfg, "palr")
    retriever = None
    if recipe.retriever == "sasrec":
        from fusionrec.launch.palr_retriever import sasrec_retriever

        retriever = sasrec_retriever(recipe, cfg.train.run_dir, strategy)
    return Built(module=PALRModule(recipe, retriever=retriever), train_loader=[])
