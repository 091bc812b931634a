"""Collaborative initial IDs (``idgenrec.initial_ids = "collab"``): NOT IDGenRec's method, a labelled change.

Why: a from-scratch recommender on title IDs must learn "item A -> item B" from words that many unrelated
items share (brands); on real Beauty it stays near most-popular for an hour of CPU training, while the
item-to-item transition counts alone reach ~4x that. Here the ID itself carries the collaborative signal,
as in P5's collaborative indexing (CID, OpenP5) and TIGER's hierarchical semantic IDs: items that are bought
next to each other share ID prefixes, so the decoder's first tokens choose a neighbourhood, later ones an
item within it.

How (deterministic, training interactions only — validation/test targets never shape an ID):
1. an item-item co-occurrence graph from the TRAINING samples: each target with the ``window`` most recent
   items of its history, weight 1/distance, symmetric;
2. a spectral embedding of the degree-normalised graph (top ``dim`` singular vectors, rows L2-normalised:
   Ng-Jordan-Weiss);
3. recursive k-means with ``branching`` clusters per level until a cluster holds <= ``branching`` items,
   whose position then ends the ID (a leaf index);
4. level ``l``'s cluster ``c`` is written as the ``c``-th word of level ``l``'s word list: frequent, short,
   encodable title words, disjoint between levels (IDs stay text for the tokenizer, the trie, the prompt).
Items without any training interaction have a zero embedding and end up in one cluster, split by order.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from fusionrec.trainer.idgen.config import normalize_id
from fusionrec.trainer.idgen.id_table import IDTable

_SHORT_WORD = re.compile(r"^[a-z]{2,6}$")


def cooccurrence(samples: Iterable[Mapping[str, Any]], items: Sequence[str], window: int) -> torch.Tensor:
    """Symmetric sparse [N, N] graph: every (history[-j], target) pair of the samples, weight 1/j, j <= window.
    Items outside `items` (none in a consistent corpus) are an error, not a silent drop."""
    index = {item: i for i, item in enumerate(items)}
    pairs: Counter[tuple[int, int]] = Counter()
    for s in samples:
        target, history = s["target"], list(s["history"])[-window:]
        for j, prev in enumerate(reversed(history), start=1):
            if prev not in index or target not in index:
                raise ValueError(f"sample {s.get('__key__', '?')}: item {prev!r} or {target!r} has no title")
            a, b = index[prev], index[target]
            if a != b:
                pairs[(a, b)] += 1.0 / j
    if not pairs:
        raise ValueError("collaborative IDs need training interactions; the training split has none")
    ij = torch.tensor(list(pairs), dtype=torch.long).T
    w = torch.tensor(list(pairs.values()), dtype=torch.float64)
    both = torch.cat([ij, ij.flip(0)], 1)
    return torch.sparse_coo_tensor(
        both, torch.cat([w, w]), (len(items), len(items)), check_invariants=True
    ).coalesce()


def spectral_embedding(adj: torch.Tensor, dim: int, seed: int) -> np.ndarray:
    """Top-`dim` singular vectors of D^-1/2 A D^-1/2, rows scaled to unit length (zero rows stay zero)."""
    deg = torch.sparse.sum(adj, 1).to_dense()
    inv = torch.where(deg > 0, deg.clamp(min=1e-12).rsqrt(), torch.zeros_like(deg))
    i, v = adj.indices(), adj.values()
    norm = torch.sparse_coo_tensor(i, v * inv[i[0]] * inv[i[1]], adj.shape, check_invariants=True).coalesce()
    q = min(dim, adj.shape[0] - 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        u, s, _ = torch.svd_lowrank(norm, q=q, niter=6)
    emb = (u * s.sqrt()).numpy()
    length = np.linalg.norm(emb, axis=1, keepdims=True)
    return np.divide(emb, length, out=np.zeros_like(emb), where=length > 0)


def kmeans(x: np.ndarray, k: int, seed: int, iters: int = 30) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; labels [n] in [0, k). Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    centers = [x[rng.integers(len(x))]]
    d = ((x - centers[0]) ** 2).sum(-1)  # squared distance to the nearest chosen center, kept up to date
    for _ in range(1, k):
        total = d.sum()
        centers.append(x[rng.choice(len(x), p=d / total)] if total > 0 else x[rng.integers(len(x))])
        d = np.minimum(d, ((x - centers[-1]) ** 2).sum(-1))
    c = np.asarray(centers)
    labels = np.zeros(len(x), dtype=np.int64)
    for _ in range(iters):
        labels = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
        moved = np.stack([x[labels == j].mean(0) if (labels == j).any() else c[j] for j in range(k)])
        if np.allclose(moved, c):
            break
        c = moved
    return labels


def hierarchical_codes(x: np.ndarray, branching: int, seed: int) -> list[tuple[int, ...]]:
    """Each row's path of cluster indices, ending in its position within a leaf of <= `branching` rows.
    Paths are distinct; a cluster k-means cannot split (identical rows) is split by row order."""
    codes: list[tuple[int, ...]] = [()] * len(x)
    stack = [(np.arange(len(x)), ())]
    while stack:
        rows, prefix = stack.pop()
        if len(rows) <= branching:
            for pos, r in enumerate(rows):
                codes[r] = (*prefix, pos)
            continue
        labels = kmeans(x[rows], branching, seed + len(prefix))
        if len(np.unique(labels)) == 1:  # no structure left: order chunks
            labels = np.arange(len(rows)) * branching // len(rows)
        for c in np.unique(labels):
            stack.append((rows[labels == c], (*prefix, int(c))))
    return codes


def level_words(
    titles: Mapping[str, str], levels: int, branching: int, encodable: Callable[[str], bool]
) -> list[list[str]]:
    """`levels` disjoint lists of `branching` words: the most frequent short title words (ties by word)."""
    counts = Counter(w for t in titles.values() for w in normalize_id(t).split() if _SHORT_WORD.match(w))
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if encodable(w)]
    need = levels * branching
    if len(words) < need:
        raise ValueError(
            f"collaborative IDs need {need} distinct short title words, the titles have {len(words)}"
        )
    return [words[lvl * branching : (lvl + 1) * branching] for lvl in range(levels)]


def collab_table(
    samples: Iterable[Mapping[str, Any]],
    titles: Mapping[str, str],
    encodable: Callable[[str], bool],
    branching: int = 32,
    dim: int = 32,
    window: int = 3,
    seed: int = 0,
) -> IDTable:
    """The collaborative ID table of every titled item (module docstring). `samples`: training split only."""
    items = list(titles)
    emb = spectral_embedding(cooccurrence(samples, items, window), dim, seed)
    codes = hierarchical_codes(emb, branching, seed)
    depth = max(len(c) for c in codes)
    words = level_words(titles, depth, branching, encodable)
    ids = {
        item: " ".join(words[lvl][c] for lvl, c in enumerate(code))
        for item, code in zip(items, codes, strict=True)
    }
    lengths = Counter(len(c) for c in codes)
    stats = {"initial": "collab", "items": len(ids), "branching": branching, "dim": dim, "window": window,
             "isolated": int((np.abs(emb).sum(1) == 0).sum()), "depths": dict(sorted(lengths.items()))}  # fmt: skip
    return IDTable(ids, "generative", 0, stats)
