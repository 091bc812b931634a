"""PALR (paper 002): a retrieval layer proposes candidates, a fine-tuned causal LM re-ranks them.

Any retriever fits behind `Retriever`. Two live here because they need no training: most-popular and item
co-occurrence (the "co-watched by many users" negatives of the paper's Recommend_Retrieval task).
`SASRecRetriever` adapts a trained SASRec (the paper's retrieval layer, the recipe's default); training,
saving and loading SASRec live in `cluster/baselines.py`, so the launch layer builds it (trainer must not
import cluster) and hands the model + its item vocabulary in.

Re-ranking scores every candidate c as the first item of the answer to the Recommend_Retrieval prompt,
by its length-normalised log-likelihood; the prompt (history + all candidates) is encoded once and its KV
cache shared by all candidates (`score_candidates`) — 50 candidates cost one long forward plus one packed
row of short ones (`bench/palr_rerank_speed.py` measures users/s and tokens/s).
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from fusionrec.trainer.llm.scoring import score_candidates
from fusionrec.trainer.metrics import hit_at_k, ndcg_at_k
from fusionrec.trainer.models.sasrec import SASRec, left_pad
from fusionrec.trainer.recipes.palr.data import PALRConfig, palr_answer, palr_example, palr_prompt
from torch import nn


class Retriever(Protocol):
    """Top-n candidate item ids for a user history (oldest first); never returns history items."""

    def retrieve(self, history: Sequence[str], n: int) -> list[str]: ...


class MostPopular:
    """Items by training-interaction count (ties by id, so results are deterministic)."""

    def __init__(self, sequences: Sequence[Sequence[str]]) -> None:
        counts = Counter(i for seq in sequences for i in seq)
        self.ranked = [i for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]

    def retrieve(self, history: Sequence[str], n: int) -> list[str]:
        seen = set(history)
        return [i for i in self.ranked if i not in seen][:n]


class Cooccurrence:
    """Items co-occurring within `window` positions of the user's last `recent` items, backed by popularity."""

    def __init__(self, sequences: Sequence[Sequence[str]], window: int = 3, recent: int = 5) -> None:
        if window < 1 or recent < 1:
            raise ValueError(f"window={window} and recent={recent} must be >= 1")
        self.co: dict[str, Counter] = defaultdict(Counter)
        for seq in sequences:
            for i, a in enumerate(seq):
                for b in seq[max(0, i - window) : i]:
                    if a != b:
                        self.co[a][b] += 1
                        self.co[b][a] += 1
        self.recent = recent
        self.fallback = MostPopular(sequences)

    def retrieve(self, history: Sequence[str], n: int) -> list[str]:
        seen = set(history)
        scores: Counter = Counter()
        for item in history[-self.recent :]:
            scores.update(self.co.get(item, Counter()))
        ranked = [i for i, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0])) if i not in seen][:n]
        if len(ranked) < n:
            taken = set(ranked)
            ranked += [i for i in self.fallback.retrieve(history, n + len(taken)) if i not in taken][
                : n - len(ranked)
            ]
        return ranked


class SASRecRetriever:
    """Top-n by a trained SASRec's next-item scores over all items, history items excluded.

    `item_ids[j]` is the item of SASRec column j (the checkpoint's `id_table.json`). A history item outside
    that vocabulary means the checkpoint belongs to another corpus: ValueError naming the item.
    """

    def __init__(self, model: SASRec, item_ids: Sequence[str]) -> None:
        if len(item_ids) != model.cfg.num_items:
            raise ValueError(f"{len(item_ids)} item ids for a SASRec of {model.cfg.num_items} items")
        self.model = model.eval()
        self.item_ids = list(item_ids)
        self.index = {item: j for j, item in enumerate(self.item_ids)}

    def _indices(self, history: Sequence[str]) -> list[int]:
        try:
            return [self.index[i] for i in history]
        except KeyError as err:
            raise ValueError(
                f"item {err.args[0]!r} is not in the SASRec retriever's vocabulary "
                f"({len(self.item_ids)} items): was it trained on another corpus?"
            ) from None

    @torch.no_grad()
    def retrieve_many(self, histories: Sequence[Sequence[str]], n: int) -> list[list[str]]:
        """One batched forward for many users (same result as `retrieve` per user)."""
        rows = [np.asarray(self._indices(h), dtype=np.int64) for h in histories]
        scores = self.model.full_scores(left_pad(rows, self.model.cfg.max_len))  # item j -> input j + 1
        for b, row in enumerate(rows):
            scores[b, torch.from_numpy(row)] = -math.inf  # the Retriever contract: never a history item
        top = scores.topk(min(n, self.model.cfg.num_items), dim=1)
        return [
            [self.item_ids[j] for j, v in zip(idx, val, strict=True) if v > -math.inf]
            for idx, val in zip(top.indices.tolist(), top.values.tolist(), strict=True)
        ]

    def retrieve(self, history: Sequence[str], n: int) -> list[str]:
        return self.retrieve_many([history], n)[0]


def training_examples(
    sequences: dict[str, list[str]], text: dict[str, str], retriever: Retriever, cfg: PALRConfig
) -> list[tuple[str, str]]:
    """(prompt, answer) pairs for fine-tuning on a `finetune_share` of users (training part: items[:-2]).

    Each chosen user gives a Recommend sample and a Recommend_Retrieval sample; the latter's candidates are
    the targets plus `negatives` retrieved items (similar ones, not random).
    """
    rng = random.Random(cfg.seed)
    users = sorted(u for u, seq in sequences.items() if len(seq) >= 4)
    chosen = rng.sample(users, max(1, int(len(users) * cfg.finetune_share)))
    out = []
    for user in sorted(chosen):
        train = sequences[user][:-2]  # valid/test targets never leak into fine-tuning
        cut = max(1, len(train) - cfg.tasks.n_targets)
        hist, targets = train[:cut], train[cut:]
        hist_t, targets_t = [text[i] for i in hist], [text[i] for i in targets]
        out.append(palr_example(hist_t, targets_t, None, cfg.tasks, rng))
        negatives = [
            text[i] for i in retriever.retrieve(hist, cfg.negatives + len(targets)) if i not in targets
        ]
        out.append(palr_example(hist_t, targets_t, negatives[: cfg.negatives], cfg.tasks, rng))
    return out


def _rank_metrics(rank: int | None, ks: Sequence[int]) -> dict[str, float]:
    """HR@k / NDCG@k of one user whose target sits at 0-based `rank` (None: not retrieved)."""
    r = torch.tensor([-1 if rank is None else rank])  # trainer.metrics: -1 = not ranked
    return {
        name: float(fn(r, k)[0]) for k in ks for name, fn in ((f"HR@{k}", hit_at_k), (f"NDCG@{k}", ndcg_at_k))
    }


@torch.no_grad()
def rerank_ranks(
    model: nn.Module,
    tokenizer,
    users: Sequence[tuple[list[str], str]],
    text: dict[str, str],
    retriever: Retriever,
    cfg: PALRConfig,
) -> list[tuple[int | None, int | None]]:
    """Per user ((history, target) pairs): 0-based rank of the target in the retriever's top-n and in the
    LM's re-ranking of it (None: not retrieved). Ties in LM score keep the retriever's order."""
    out = []
    for history, target in users:
        cands = retriever.retrieve(history, cfg.top_n)
        prompt = palr_prompt([text[i] for i in history], [text[i] for i in cands], cfg.tasks)
        prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        answers = [tokenizer(palr_answer([text[i]]), add_special_tokens=False)["input_ids"] for i in cands]
        scores = score_candidates(model, prompt_ids, answers, tokenizer.pad_token_id).mean.tolist()
        llm_order = [c for _, c in sorted(zip(scores, cands, strict=True), key=lambda sc: -sc[0])]
        out.append(tuple(order.index(target) if target in order else None for order in (cands, llm_order)))
    return out


def rank_summary(
    ranks: Sequence[tuple[int | None, int | None]], ks: Sequence[int]
) -> dict[str, dict[str, float]]:
    """Mean HR/NDCG@k of the retriever's order and of the LM's, from `rerank_ranks` output."""
    sums = {"retriever": Counter(), "llm": Counter()}
    for r_rank, l_rank in ranks:
        sums["retriever"].update(_rank_metrics(r_rank, ks))
        sums["llm"].update(_rank_metrics(l_rank, ks))
    n = max(1, len(ranks))
    return {
        name: {k: v / n for k, v in sorted(s.items())} | {"users": float(len(ranks))}
        for name, s in sums.items()
    }


def rerank_eval(
    model: nn.Module,
    tokenizer,
    users: Sequence[tuple[list[str], str]],
    text: dict[str, str],
    retriever: Retriever,
    cfg: PALRConfig,
) -> dict[str, dict[str, float]]:
    """Mean HR/NDCG@k over `users` ((history, target) pairs) of the retriever's order vs the LM's re-ranking."""
    return rank_summary(rerank_ranks(model, tokenizer, users, text, retriever, cfg), cfg.ks)
