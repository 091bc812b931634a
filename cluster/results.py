"""Result tables and plots of evaluation records: markdown, CSV, a bar chart (written atomically)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..fileio import atomic_target

_TABLE_COLS = ("HR@5", "HR@10", "NDCG@5", "NDCG@10")


def results_rows(results: Sequence[dict[str, Any]], cols: Sequence[str] = _TABLE_COLS) -> list[list[str]]:
    """Rows (header first) for Markdown/CSV: one row per (model, dataset) result record."""
    rows = [["model", "dataset", *cols, "users", "seconds"]]
    for r in results:
        m = r["metrics"]
        rows.append(
            [str(r.get("model", "")), r["dataset"], *(f"{m[c]:.4f}" if c in m else "" for c in cols),
             str(r["users"]), f"{r['seconds']:.1f}"]
        )  # fmt: skip
    return rows


def results_markdown(results: Sequence[dict[str, Any]], cols: Sequence[str] = _TABLE_COLS) -> str:
    rows = results_rows(results, cols)
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
    path = Path(path)
    with atomic_target(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path
