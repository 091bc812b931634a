"""Result tables and plots of evaluation records: markdown, CSV, a bar chart (written atomically); what every
figure is read against: a 95% bootstrap interval over users (`metric_intervals`) and the exact expectation of
a uniformly random ranking of the same users' candidates (`random_ranking_metrics`)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_target

_TABLE_COLS = ("HR@5", "HR@10", "NDCG@5", "NDCG@10")


BOOTSTRAP_RESAMPLES = 1000


def metric_intervals(
    sums: Any,
    metrics: Sequence[str],
    level: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Percentile bootstrap interval over users of each HR@k / NDCG@k of a `trainer.metrics.MetricSums`.

    Every metric is a function of the user's target rank alone, so resampling the n users with replacement
    is exactly a multinomial draw of n over the rank histogram (`rank_counts` + `misses`): the resamples are
    drawn that way, from the evaluator's exact merged counts (no per-user list needed). Seeded: the same
    counts give the same interval."""
    n = sums.count
    if n == 0:
        raise ValueError("no users were evaluated: no interval")
    counts = np.append(np.asarray(sums.rank_counts, dtype=np.float64), sums.misses)
    draws = np.random.default_rng(seed).multinomial(n, counts / n, size=resamples).astype(np.float64)
    gain = 1.0 / np.log2(np.arange(sums.depth, dtype=np.float64) + 2.0)
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    out: dict[str, list[float]] = {}
    for name in metrics:
        kind, k = name.split("@")
        k = int(k)
        if kind == "HR":
            vals = draws[:, :k].sum(axis=1) / n
        elif kind == "NDCG":
            vals = draws[:, :k] @ gain[:k] / n
        else:
            raise ValueError(f"no interval for metric {name!r} (HR@k and NDCG@k only)")
        out[name] = [float(np.quantile(vals, lo_q)), float(np.quantile(vals, hi_q))]
    return out


def per_user_metric(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Each user's HR@k or NDCG@k from 0-based target ranks (-1 = not ranked)."""
    kind, k = metric.split("@")
    ranks = np.asarray(ranks)
    hit = (ranks >= 0) & (ranks < int(k))
    if kind == "HR":
        return hit.astype(np.float64)
    if kind == "NDCG":
        return np.where(hit, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
    raise ValueError(f"no per-user value for metric {metric!r} (HR@k and NDCG@k only)")


def bootstrap_mean(values: np.ndarray, level: float, resamples: int, seed: int) -> list[float]:
    """Percentile bootstrap interval of the mean of per-user `values` (users resampled with replacement)."""
    idx = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))
    means = values[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return [float(lo), float(hi)]


def rank_interval(
    ranks: np.ndarray, metric: str, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> list[float]:
    """95% bootstrap interval over users of `metric` from per-user 0-based target ranks (-1 = not ranked):
    `metric_intervals` for a model whose per-user ranks are at hand rather than merged counts."""
    values = per_user_metric(ranks, metric)
    if len(values) == 0:
        raise ValueError("no users were evaluated: no interval")
    return bootstrap_mean(values, level, resamples, seed)


def paired_difference(
    ranks_a: np.ndarray,
    ranks_b: np.ndarray,
    metric: str,
    level: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """A - B on the *same* users (ranks in the same user order): the mean difference of `metric` and its
    percentile bootstrap interval over users (both models' values of a user move together, so the interval
    is much narrower than two separate ones). "A beats B" means the interval's low end is above zero."""
    a, b = per_user_metric(ranks_a, metric), per_user_metric(ranks_b, metric)
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"paired comparison needs the same non-empty users, got {len(a)} and {len(b)}")
    diff = a - b
    lo, hi = bootstrap_mean(diff, level, resamples, seed)
    return {"metric": metric, "a": float(a.mean()), "b": float(b.mean()), "difference": float(diff.mean()),
            "interval": [float(lo), float(hi)], "users": len(diff), "level": level}  # fmt: skip


def random_ranking_metrics(data: Any, ks: Sequence[int], exclude_history: bool) -> dict[str, Any]:
    """HR@k and NDCG@k of a uniformly random ranking of each user's candidates, exactly (expectation, no
    sampling), on the users of `data` (a `cluster.evalset.EvalSet`).

    Without history exclusion every user ranks all N items: HR@k = k/N, NDCG@k = (1/N) sum_{r<k} 1/log2(r+2).
    With `exclude_history` a user's candidates are the N - |distinct history| items left (C_u), a target
    inside the history can never be hit (0), and the expectation is averaged over users."""
    n_items, users = len(data.item_ids), len(data)
    if users == 0 or n_items == 0:
        raise ValueError(f"{data.name}: no users or no items: no random expectation")
    cands = np.full(users, n_items, dtype=np.int64)
    reachable = np.ones(users, dtype=bool)
    if exclude_history:
        for i in range(users):
            hist = np.unique(data.history(i))
            cands[i] = n_items - len(hist)
            reachable[i] = not np.isin(data.targets[i], hist)
    gain = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(max(ks), dtype=np.float64) + 2.0))])
    out: dict[str, Any] = {"count": float(users)}
    safe = np.maximum(cands, 1)
    for k in ks:
        depth = np.minimum(k, cands)
        out[f"HR@{k}"] = float(np.mean(np.where(reachable, depth / safe, 0.0)))
    for k in ks:
        depth = np.minimum(k, cands)
        out[f"NDCG@{k}"] = float(np.mean(np.where(reachable, gain[depth] / safe, 0.0)))
    out["items"] = n_items
    out["candidates"] = "all items" if not exclude_history else "items minus the user's history, per user"
    out["mean_candidates"] = float(cands.mean())
    return out


def value_with_interval(r: dict[str, Any], col: str) -> str:
    """`0.0123 [0.0100, 0.0150]`: a record's metric with its 95% interval, or the value alone without one."""
    ci = (r.get("intervals") or {}).get(col)
    return f"{r['metrics'][col]:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


def _cell(r: dict[str, Any], col: str, with_interval: bool) -> str:
    if col not in r["metrics"]:
        return ""
    return value_with_interval(r, col) if with_interval else f"{r['metrics'][col]:.4f}"


def results_rows(
    results: Sequence[dict[str, Any]], cols: Sequence[str] = _TABLE_COLS, with_intervals: bool = False
) -> list[list[str]]:
    """Rows (header first) for Markdown/CSV: one row per (model, dataset) result record; `with_intervals`
    writes each metric's 95% bootstrap interval beside it where the record has one."""
    rows = [["model", "dataset", *cols, "users", "seconds"]]
    for r in results:
        rows.append(
            [str(r.get("model", "")), r["dataset"], *(_cell(r, c, with_intervals) for c in cols),
             str(r["users"]), f"{r['seconds']:.1f}"]
        )  # fmt: skip
    return rows


def results_markdown(results: Sequence[dict[str, Any]], cols: Sequence[str] = _TABLE_COLS) -> str:
    rows = results_rows(results, cols, with_intervals=True)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines) + "\n"


def results_csv(results: Sequence[dict[str, Any]], cols: Sequence[str] = _TABLE_COLS) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(results_rows(results, cols))
    return buf.getvalue()


def plot_results(results: Sequence[dict[str, Any]], path: str | Path, metric: str = "NDCG@10") -> Path:
    """A grouped bar chart of `metric` per dataset and model (matplotlib, Agg: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in results})
    models = sorted({str(r.get("model", "")) for r in results})
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(4, 1.5 * len(datasets) * max(1, len(models)) / 2), 3.5))
    for j, model in enumerate(models):
        vals = [
            next(
                (
                    r["metrics"][metric]
                    for r in results
                    if r["dataset"] == d and str(r.get("model", "")) == model
                ),
                0.0,
            )
            for d in datasets
        ]
        ax.bar([i + j * width for i in range(len(datasets))], vals, width, label=model or "model")
    ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(datasets))], datasets)
    ax.set_ylabel(metric)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write a matplotlib figure atomically (temp name + rename, the format from the suffix) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_target(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path
