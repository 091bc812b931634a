"""Is recommendation a real task on this dataset? Popularity skew and the two trivial baselines, exactly.

On real data (Amazon Beauty) most-popular hits about 1% of test targets and a random ranking 0.08%, while a
sequential model reaches 7-9%. A synthetic world where most-popular hits a quarter of the targets teaches
nothing, so `fusionrec inspect` prints these figures for every dataset of a corpus and the demo's world is
tested against them (tests/test_world.py):

- `gini`: Gini coefficient of the items' interaction counts (0 = uniform, 1 = one item has everything);
- `tail_share`: share of interactions on the 80% least popular items (real Amazon sets: about 0.3-0.5);
- `most_popular_hr@k`: leave-one-out test users (target items[-1]), items ranked by their count in the
  training parts items[:-2] (ties by item id), history not excluded - the evaluation harness' protocol;
- `random_hr@k`: k / #items, the exact expectation of a uniformly random ranking of all items.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

TAIL_ITEMS = 0.8  # the least popular 80% of items form the "tail"


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (mean absolute difference / twice the mean)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n = len(x)
    if n == 0 or x.sum() == 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float(((2 * ranks - n - 1) * x).sum() / (n * x.sum()))


def tail_share(counts: np.ndarray) -> float:
    """Share of all interactions that fall on the least popular TAIL_ITEMS of items."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n_tail = int(np.floor(TAIL_ITEMS * len(x)))
    return float(x[:n_tail].sum() / x.sum()) if x.sum() else 0.0


def most_popular_hr(sequences: Sequence[Sequence[str]], k: int) -> float:
    """HR@k of most-popular (fit on items[:-2]) on the test targets items[-1] of users with >= 3 items."""
    train = Counter(item for seq in sequences for item in seq[:-2])
    top = {item for item, _ in sorted(train.items(), key=lambda kv: (-kv[1], kv[0]))[:k]}
    tests = [seq[-1] for seq in sequences if len(seq) >= 3]
    if not tests:
        raise ValueError("no user has >= 3 items: no leave-one-out test target")
    return sum(t in top for t in tests) / len(tests)


def sequence_stats(sequences: Sequence[Sequence[str]], k: int = 10) -> dict[str, float | int]:
    """The figures of the module docstring for one dataset's per-user item sequences (in time order)."""
    counts = Counter(item for seq in sequences for item in seq)
    values = np.fromiter(counts.values(), dtype=np.int64, count=len(counts))
    return {
        "users": len(sequences),
        "items": len(counts),
        "gini": round(gini(values), 4),
        "tail_share": round(tail_share(values), 4),
        f"most_popular_hr@{k}": round(most_popular_hr(sequences, k), 4),
        f"random_hr@{k}": round(k / len(counts), 6),
    }


def dataset_stats(processed_dir: str | Path, k: int = 10) -> dict[str, float | int]:
    """`sequence_stats` of a processed dataset folder (its sequences.parquet)."""
    path = Path(processed_dir) / "sequences.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a processed dataset (no sequences.parquet)")
    return sequence_stats(pq.read_table(path, columns=["item_ids"])["item_ids"].to_pylist(), k)


def format_stats(stats: dict[str, float | int], k: int = 10) -> str:
    return (
        f"popularity Gini {stats['gini']:.2f}, tail share {stats['tail_share']:.2f}; "
        f"most-popular HR@{k} {stats[f'most_popular_hr@{k}']:.4f}, random HR@{k} {stats[f'random_hr@{k}']:.4f}"
    )


def corpus_stats(corpus_dir: str | Path, k: int = 10) -> dict[str, dict[str, float | int]]:
    """`dataset_stats` of every processed dataset of a corpus: pretraining ones, then held-out (zero-shot)."""
    corpus = Path(corpus_dir)
    dirs = sorted((corpus / "processed").glob("*/sequences.parquet"))
    dirs += sorted((corpus / "zeroshot").glob("*/processed/*/sequences.parquet"))
    return {p.parent.name: dataset_stats(p.parent, k) for p in dirs}


def format_corpus_stats(stats: dict[str, dict[str, float | int]], indent: str = "", k: int = 10) -> str:
    lines = [f"{indent}is recommendation a real task here? (data_pipeline/world_stats.py)"]
    lines += [f"{indent}  {name}: {format_stats(s, k)}" for name, s in stats.items()]
    return "\n".join(lines)
