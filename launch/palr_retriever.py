"""PALR's default retrieval layer: a SASRec, supplied by the launch layer (trainer/ must not import cluster/).

`palr.retriever = "sasrec"`:
* `palr.retriever_checkpoint = PATH` — every rank loads that saved SASRec (`cluster.baselines.save_sasrec`).
* otherwise SASRec is trained on the corpus' training split (items[:-2] of every user; the best epoch chosen
  on the valid target items[-2], never on the test target) and saved to `<run_dir>/retriever/sasrec`. Only
  rank 0 trains — with the threads of all local ranks, which are idle meanwhile — and saves atomically (temp
  folder + rename); the other ranks poll for the folder (no collective, so no NCCL/gloo timeout however long
  training takes; if rank 0 dies, the launcher stops them) and then load it. All ranks therefore use the
  same weights. A later run in the same run dir (e.g. a resume) reuses the saved SASRec.

The training settings are the measured fast CE setting on Amazon Beauty (lr 3e-3, batch 512, validation
every 2 epochs, patience 2; 8 epochs reach test HR@10 ~0.07 in ~4.5 min on 2 cores, tests/test_baselines.py).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from fusionrec.fileio import atomic_write_text
from fusionrec.trainer.worker import Built

if TYPE_CHECKING:
    from fusionrec.launch.config import Config

RETRIEVER_DIR = Path("retriever") / "sasrec"
POLL_S = 2.0


def fast_sasrec_config(epochs: int, threads: int, seed: int = 0, device: str = "cpu") -> Any:
    """SASRec-CE with the fast Beauty setting of bench/sasrec.py (cluster.baselines.SASRecTrainConfig)."""
    from fusionrec.cluster.baselines import SASRecTrainConfig

    return SASRecTrainConfig(
        loss="ce",
        lr=3e-3,
        batch_size=512,
        epochs=epochs,
        eval_every=2,
        patience=2,
        threads=threads,
        seed=seed,
        device=device,
    )


def train_and_save_sasrec(
    data_dir: str | Path, out: Path, epochs: int, threads: int, device: str = "cpu"
) -> dict[str, Any]:
    """Train SASRec on the training split of a processed dataset folder (on `device`), save it to `out`
    (atomic; the saved state is on the CPU)."""
    from fusionrec.cluster.baselines import load_corpus, save_sasrec, train_sasrec, train_sequences
    from fusionrec.cluster.evaluator import EvalSet

    seqs, items, name = load_corpus(data_dir)
    train = train_sequences(seqs, items)
    valid = EvalSet.from_sequences(seqs, "valid", name, items)
    cfg = fast_sasrec_config(epochs, threads, device=device)
    before = torch.get_num_threads()
    try:
        model, history = train_sasrec(train, len(items), cfg, valid, log=lambda line: None)
    finally:
        torch.set_num_threads(before)  # train_sasrec sets the thread count; the LM ranker runs after it
    save_sasrec(out, model, items, cfg)
    curve = [{"epoch": e["epoch"], "seconds": e["seconds"], "HR@10": e["valid"]["HR@10"],
              "NDCG@10": e["valid"]["NDCG@10"]} for e in history["epochs"] if "valid" in e]  # fmt: skip
    summary = {"seconds": history["seconds"], "epochs": len(history["epochs"]), "threads": threads,
               "device": device, "best_valid_ndcg@10": history["best_valid_ndcg@10"], "users": len(train),
               "items": len(items), "valid_users": len(valid), "valid_curve": curve}  # fmt: skip
    atomic_write_text(out.parent / f"{out.name}.train.json", json.dumps(summary, indent=2))
    return summary


def _wait_for(path: Path, rank: int) -> None:
    """Poll until rank 0 has renamed the finished checkpoint into place."""
    while not (path / "config.json").is_file():
        time.sleep(POLL_S)
    print(f"[fusionrec] rank {rank}: SASRec retriever ready at {path}", flush=True)


def _train_once(recipe: Any, path: Path, strategy: Any) -> None:
    """Rank 0 trains + saves unless the run dir already holds a SASRec; the other ranks wait for it."""
    if (path / "config.json").is_file():
        return
    if not strategy.is_rank0:
        _wait_for(path, strategy.rank)
        return
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = min(os.cpu_count() or 1, torch.get_num_threads() * local)
    print(f"[fusionrec] training the SASRec retriever on {recipe.data_dir} ({threads} threads)", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    train_and_save_sasrec(recipe.data_dir, path, recipe.retriever_epochs, threads)


def sasrec_retriever(recipe: Any, run_dir: str | Path, strategy: Any) -> Any:
    """The SASRecRetriever of a PALR recipe config: loaded from `retriever_checkpoint`, or trained once."""
    from fusionrec.cluster.baselines import load_sasrec
    from fusionrec.trainer.recipes.palr.rerank import SASRecRetriever

    if recipe.retriever_checkpoint:  # a given folder is only ever read (load_sasrec names what is missing)
        path = Path(recipe.retriever_checkpoint)
        if not path.is_dir():
            raise ValueError(f"palr.retriever_checkpoint={path}: no such SASRec folder")
    else:
        path = Path(run_dir) / RETRIEVER_DIR
        _train_once(recipe, path, strategy)
    model, item_ids = load_sasrec(path)
    return SASRecRetriever(model, item_ids)


def build_palr(cfg: Config, strategy: Any) -> Built:
    """PALR (paper 002): retrieval candidates -> instruction-tuned LLM ranker.

    The default retriever, SASRec, lives in cluster/ (trainer/ must not import it): built here, from
    `palr.retriever_checkpoint` or trained once on the corpus' training split (below).
    """
    from fusionrec.trainer.recipes.palr.module import PALRModule

    recipe = cfg.required_section("palr")
    retriever = None
    if recipe.retriever == "sasrec":
        retriever = sasrec_retriever(recipe, cfg.train.run_dir, strategy)
    return Built(module=PALRModule(recipe, retriever=retriever), train_loader=[])
