"""Baselines in the evaluation harness: most-popular and SASRec (Kang & McAuley 2018), trained in-project.

Protocol (DESIGN.md, leave-one-out): models train on items[:-2] of every user; valid target = items[-2]
(history items[:-2]); test target = items[-1] (history items[:-1]). Ranking is over *all* items.
History items are NOT masked by default, matching the generative models' trie-constrained beam search of
the IDGenRec/P5 protocol (which can also return a history item); `exclude_history=True` masks them (the
RecBole-style protocol) and is reported separately.

Checkpoints are folders: `config.json` (model type + config), `id_table.json` (the item vocabulary:
row i = item id; a checkpoint without it is refused) and `model.safetensors` (SASRec) or
`popularity.json` (most-popular). Writes go to a temp folder renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..trainer.metrics import MetricSums
from ..trainer.models.sasrec import SASRec, SASRecConfig, left_pad
from ..trainer.recipes.sasrec.data import (  # noqa: F401 - load_corpus/train_sequences: cluster's API too
    length_sorted_batches,
    load_corpus,
    negatives,
    sequence_batch,
    train_sequences,
)
from ..trainer.recipes.sasrec.loss import sasrec_loss
from .evaluator import EvalSet, UserBatch

# ------------------------------------------------------------------------------------------------ data


def _save_checkpoint(out: Path, config: dict[str, Any], item_ids: list[str], write_payload) -> Path:
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    (tmp / "id_table.json").write_text(json.dumps(item_ids))
    write_payload(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _load_checkpoint(ckpt: str | Path, model_type: str) -> tuple[dict[str, Any], list[str]]:
    ckpt = Path(ckpt)
    for name in ("config.json", "id_table.json"):
        if not (ckpt / name).exists():
            raise FileNotFoundError(
                f"{ckpt}: checkpoint has no {name} (every checkpoint carries its ID table)"
            )
    config = json.loads((ckpt / "config.json").read_text())
    if config.get("model") != model_type:
        raise ValueError(f"{ckpt}/config.json: model {config.get('model')!r}, expected {model_type!r}")
    return config, json.loads((ckpt / "id_table.json").read_text())


# ------------------------------------------------------------------------------------------------ most-popular


def fit_most_popular(train: list[np.ndarray], num_items: int) -> np.ndarray:
    """Interaction counts per item over the training split only (never valid/test targets)."""
    flat = np.concatenate(train) if train else np.zeros(0, dtype=np.int64)
    return np.bincount(flat, minlength=num_items).astype(np.int64)


def save_most_popular(out: str | Path, counts: np.ndarray, item_ids: list[str]) -> Path:
    def payload(d: Path) -> None:
        (d / "popularity.json").write_text(json.dumps(counts.tolist()))

    return _save_checkpoint(Path(out), {"model": "most_popular"}, item_ids, payload)


class MostPopularScorer:
    """Everyone gets the same list: items by training count, ties broken by item index (deterministic)."""

    def __init__(self, counts: np.ndarray, top_k: int, exclude_history: bool = False) -> None:
        self.top_k = top_k
        self.exclude_history = exclude_history
        self.order = np.argsort(-counts, kind="stable")

    def rank(self, batch: UserBatch) -> np.ndarray:
        if not self.exclude_history:
            return np.tile(self.order[: self.top_k], (len(batch.histories), 1))
        out = np.full((len(batch.histories), self.top_k), -1, dtype=np.int64)  # -1: fewer items than k left
        for row, hist in enumerate(batch.histories):
            head = self.order[: self.top_k + len(hist)]
            keep = head[~np.isin(head, hist)][: self.top_k]
            out[row, : len(keep)] = keep
        return out


@dataclass
class MostPopularFactory:
    checkpoint: str
    top_k: int = 20
    exclude_history: bool = False

    def __call__(self) -> MostPopularScorer:
        _, item_ids = _load_checkpoint(self.checkpoint, "most_popular")
        counts = np.asarray(
            json.loads((Path(self.checkpoint) / "popularity.json").read_text()), dtype=np.int64
        )
        if len(counts) != len(item_ids):
            raise ValueError(
                f"{self.checkpoint}: {len(counts)} counts for {len(item_ids)} items in id_table.json"
            )
        return MostPopularScorer(counts, self.top_k, self.exclude_history)


def most_popular_for(
    dataset_dir: str | Path, out: str | Path, top_k: int, exclude_history: bool
) -> tuple[MostPopularFactory, list[str]]:
    """Most-popular fitted on a processed dataset's training split (each user's items[:-2]) and saved under
    `out`, as a scorer factory; with the dataset's item vocabulary (the order the scorer's indices use)."""
    seqs, vocab, _ = load_corpus(dataset_dir)
    ckpt = save_most_popular(out, fit_most_popular(train_sequences(seqs, vocab), len(vocab)), vocab)
    return MostPopularFactory(str(ckpt), top_k, exclude_history), list(vocab)


# ------------------------------------------------------------------------------------------------ SASRec


@dataclass
class SASRecTrainConfig:
    """SASRec model + training settings (`loss`: "ce" full-softmax cross-entropy, or "bce" = the paper's
    one sampled negative per position)."""

    hidden: int = 64
    num_blocks: int = 2
    num_heads: int = 1
    max_len: int = 50
    dropout: float = 0.2
    loss: str = "ce"
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    eval_every: int = 2  # epochs between validation checks (0 = never; keep the last state)
    patience: int = 3  # validation checks without NDCG@10 improvement before stopping
    threads: int = 0  # torch threads (0 = leave as is)
    device: str = "cpu"  # where it trains ("cuda" on a GPU); the saved state is always on the CPU

    def __post_init__(self) -> None:
        if self.loss not in ("ce", "bce"):
            raise ValueError(f"sasrec.loss must be 'ce' or 'bce', got {self.loss!r}")
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"sasrec.{name} must be >= 1, got {getattr(self, name)}")
        if self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"sasrec.device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.lr <= 0 or self.eval_every < 0 or self.threads < 0:
            raise ValueError(
                f"sasrec: lr={self.lr}, eval_every={self.eval_every}, threads={self.threads} invalid"
            )

    def model_config(self, num_items: int) -> SASRecConfig:
        return SASRecConfig(
            num_items, self.max_len, self.hidden, self.num_blocks, self.num_heads, self.dropout
        )


def _sasrec_loss(model: SASRec, seqs: list[np.ndarray], loss: str, rng: np.random.Generator) -> torch.Tensor:
    batch = sequence_batch(seqs, model.cfg.max_len)
    device = model.item_emb.weight.device
    hidden, weights = model(batch["inp"].to(device))
    neg = None
    if loss == "bce":
        neg = torch.from_numpy(negatives(seqs, batch["lab"], model.cfg.num_items, rng)).to(device)
    return sasrec_loss(hidden, weights, batch["lab"].to(device), neg)


@torch.no_grad()
def evaluate_in_process(
    scorer: Any, data: EvalSet, ks: tuple[int, ...] = (5, 10, 20), batch_size: int = 512
) -> MetricSums:
    """All users of `data` with one in-process scorer: training-time validation, and the single-process
    reference the actor pool must match exactly (tests, bench/eval.py)."""
    parts = []
    for lo in range(0, len(data), batch_size):
        hi = min(len(data), lo + batch_size)
        batch = UserBatch(data.user_ids[lo:hi], [data.history(i) for i in range(lo, hi)])
        topk = torch.as_tensor(np.asarray(scorer.rank(batch), dtype=np.int64))
        parts.append(MetricSums.from_topk(topk, torch.from_numpy(data.targets[lo:hi]), ks))
    return sum(parts)


class SASRecScorer:
    """Full ranking: one matmul of the last hidden state against all item embeddings, then top-k."""

    def __init__(self, model: SASRec, top_k: int, exclude_history: bool = False) -> None:
        self.model = model.eval()
        self.top_k = top_k
        self.exclude_history = exclude_history

    @torch.no_grad()
    def rank(self, batch: UserBatch) -> np.ndarray:
        device = self.model.item_emb.weight.device  # the model's device: the CPU, or a GPU while training
        scores = self.model.full_scores(left_pad(batch.histories, self.model.cfg.max_len).to(device))
        if self.exclude_history:
            rows = np.repeat(np.arange(len(batch.histories)), [len(h) for h in batch.histories])
            cols = np.concatenate(batch.histories) if batch.histories else np.zeros(0, dtype=np.int64)
            scores[torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)] = -math.inf
        return scores.topk(self.top_k, dim=1).indices.cpu().numpy()


def train_sasrec(
    train: list[np.ndarray], num_items: int, cfg: SASRecTrainConfig, valid: EvalSet | None = None, log=print
) -> tuple[SASRec, dict[str, Any]]:
    """Train SASRec on training sequences; with `valid`, keep the state with the best valid NDCG@10.

    `cfg.threads` applies for the training only: the caller's torch thread count is restored afterwards."""
    before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _fit_sasrec(train, num_items, cfg, valid, log)
    finally:
        torch.set_num_threads(before)


def _fit_sasrec(
    train: list[np.ndarray], num_items: int, cfg: SASRecTrainConfig, valid: EvalSet | None, log
) -> tuple[SASRec, dict[str, Any]]:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = SASRec(cfg.model_config(num_items)).to(cfg.device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    users = np.asarray([u for u, s in enumerate(train) if len(s) >= 2], dtype=np.int64)
    if len(users) == 0:
        raise ValueError("no user has >= 2 training items (items[:-2]); nothing to train SASRec on")
    history: dict[str, Any] = {"epochs": [], "skipped_users": len(train) - len(users)}
    best, best_state, stale, t0 = -1.0, None, 0, time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        total = torch.zeros((), dtype=torch.float64, device=cfg.device)  # on the device: no sync per step
        batches = length_sorted_batches(train, users, cfg.batch_size, rng)
        for b in batches:
            loss = _sasrec_loss(model, [train[u] for u in b], cfg.loss, rng)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        rec = {"epoch": epoch, "loss": float(total) / len(batches), "seconds": time.perf_counter() - t0}
        if valid is not None and cfg.eval_every and epoch % cfg.eval_every == 0:
            rec["valid"] = evaluate_in_process(SASRecScorer(model, 10), valid, (10,)).to_dict()
            score = rec["valid"]["NDCG@10"]
            if score > best:
                best, stale = score, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
        history["epochs"].append(rec)
        log(json.dumps(rec))
        if stale >= cfg.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    history["best_valid_ndcg@10"] = best if best_state is not None else None
    history["seconds"] = time.perf_counter() - t0
    return model.cpu().eval(), history


def save_sasrec(
    out: str | Path, model: SASRec, item_ids: list[str], train_cfg: SASRecTrainConfig | None = None
) -> Path:
    if len(item_ids) != model.cfg.num_items:
        raise ValueError(f"{len(item_ids)} item ids for a model of {model.cfg.num_items} items")
    config = {"model": "sasrec", "sasrec": dataclasses.asdict(model.cfg)}
    if train_cfg is not None:
        config["train"] = dataclasses.asdict(train_cfg)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    return _save_checkpoint(
        Path(out), config, item_ids, lambda d: save_file(state, str(d / "model.safetensors"))
    )


def load_sasrec(ckpt: str | Path) -> tuple[SASRec, list[str]]:
    """A baseline folder (save_sasrec) or a checkpoint of `fusionrec train sasrec` (RUN/checkpoints/step-N)."""
    if (Path(ckpt) / "COMPLETE.json").is_file():
        from ..trainer.recipes.sasrec.artefacts import load_sasrec_checkpoint

        return load_sasrec_checkpoint(ckpt)
    config, item_ids = _load_checkpoint(ckpt, "sasrec")
    model = SASRec(SASRecConfig(**config["sasrec"]))
    if model.cfg.num_items != len(item_ids):
        raise ValueError(f"{ckpt}: model has {model.cfg.num_items} items, id_table.json {len(item_ids)}")
    model.load_state_dict(load_file(str(Path(ckpt) / "model.safetensors")))
    return model.eval(), item_ids


@dataclass
class SASRecFactory:
    checkpoint: str
    top_k: int = 20
    exclude_history: bool = False
    threads: int = 1  # per actor: one core each, so N actors on N cores do not oversubscribe

    def __call__(self) -> SASRecScorer:
        torch.set_num_threads(self.threads)
        model, _ = load_sasrec(self.checkpoint)
        return SASRecScorer(model, self.top_k, self.exclude_history)
