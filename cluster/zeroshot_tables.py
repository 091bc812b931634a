"""The zero-shot harness's tables and plot (RESULTS/zeroshot.md, .csv, .reference.csv, .png), from its records.

Per dataset: ours, the exact random expectation and the in-domain most-popular (labelled not zero-shot), each
metric with its 95% interval; the paper's Table 7 only in a separate reference section and file that says
what it was measured on (never in our table or plot).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text as atomic_write
from .results import BOOTSTRAP_RESAMPLES, save_figure, value_with_interval

PAPER_SOURCE = (
    "IDGenRec paper, Table 7 (zero-shot): the foundation model pretrained for one epoch on the 'Fusion' corpus "
    "of 19 OTHER Amazon review datasets (large ones downsampled to 30,000 users), then tested zero-shot on "
    "the full Amazon Sports/Beauty/Toys/Music/Instruments and Yelp datasets, ranking all items; UniSRec is "
    "the paper's zero-shot baseline. Not measured by us, not on our pretraining data or user sample: a "
    "reference, never a comparison row."
)
METRICS = ("HR@5", "HR@10", "NDCG@5", "NDCG@10")
INTERVAL = f"95% percentile bootstrap over users ({BOOTSTRAP_RESAMPLES} resamples, seed 0)"


def _row_label(r: dict[str, Any], kind: str) -> str:
    if kind == "ours":
        return f"ours (zero-shot, {r['users_selection']['selection']})"
    if kind == "random":
        return "random ranking (exact expectation)"
    return f"most-popular (fit on {r['dataset']}'s own train split; not zero-shot)"


def _rows_of(r: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(kind, record-like) for each row of a dataset: ours, random, most-popular (when evaluated)."""
    rows = [("ours", r), ("random", {"metrics": r["random"], "users": r["users"]})]
    if r.get("most_popular"):
        rows.append(("most_popular", r["most_popular"]))
    return rows


def zeroshot_rows(records: list[dict[str, Any]]) -> list[list[str]]:
    """Header + per dataset: ours, the exact random expectation, most-popular fitted on the dataset's own
    training split (same users; not zero-shot). Every metric with its 95% interval; no paper numbers (they
    are in `reference_rows`)."""
    metric_cols = [c for m in METRICS for c in (m, f"{m} ci95 lo", f"{m} ci95 hi")]
    rows = [["dataset", "scenario", "row", "zero_shot", *metric_cols, "users", "users_selection", "seconds",
             "users/s", "id_scheme", "id_quality", "idgen_s"]]  # fmt: skip
    for r in records:
        for kind, x in _rows_of(r):
            ci = x.get("intervals") or {}
            vals = []
            for m in METRICS:
                lo_hi = [f"{b:.4f}" for b in ci[m]] if m in ci else ["", ""]
                vals += [f"{x['metrics'][m]:.4f}", *lo_hi]
            timing = [f"{x['seconds']:.1f}", f"{x['users_per_s']:.2f}"] if kind != "random" else ["", ""]
            rows.append([r["dataset"], r.get("scenario", ""), _row_label(r, kind),
                         {"ours": "yes", "random": "n/a", "most_popular": "no"}[kind], *vals, str(x["users"]),
                         r["users_selection"]["selection"], *timing, r["id_table"].get("method", ""),
                         r["id_quality"]["status"], f"{r['idgen_seconds']:.1f}"])  # fmt: skip
    return rows


def reference_rows(records: list[dict[str, Any]]) -> list[list[str]]:
    """Header + the paper's Table 7 rows for the evaluated dataset names (reference only, see PAPER_SOURCE)."""
    rows = [["dataset", "model", *METRICS, "measured_on"]]
    for r in records:
        ref = r.get("paper_reference") or {}
        for model, vals in (ref.get("numbers") or {}).items():
            rows.append([r["dataset"], f"paper {model} (Table 7)", *(f"{vals[k]:.4f}" for k in METRICS),
                         "19 other Amazon datasets in pretraining; the paper's full test sets"])  # fmt: skip
    return rows


def zeroshot_markdown(records: list[dict[str, Any]]) -> str:
    """Our measurements (with intervals, random and most-popular rows), the ID tables' quality, and — in a
    separate section that says what they were measured on — the paper's Table 7 numbers."""
    head = ["dataset", "scenario", "row", *METRICS, "users", "seconds", "users/s"]
    lines = ["## Zero-shot results (our measurements)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for r in records:
        for kind, x in _rows_of(r):
            timing = f"{x['seconds']:.1f} | {x['users_per_s']:.2f}" if kind != "random" else "|"
            lines.append(f"| {r['dataset']} | {r.get('scenario', '') if kind == 'ours' else ''} | "
                         f"{_row_label(r, kind)} | " + " | ".join(value_with_interval(x, m) for m in METRICS)
                         + f" | {x['users']} | {timing} |")  # fmt: skip
    lines += ["", f"[lo, hi]: {INTERVAL}. users: the number of users every figure of the row averages over.",
              "random ranking: the exact expected value of a uniformly random ranking of each user's candidates "
              "(all items of the dataset: HR@k = k / #items; with exclude_history the user's history items are "
              "removed, per user); not sampled, so no interval.",
              "most-popular: fitted on the held-out dataset's own training split, so it has seen that platform's "
              "interactions: NOT zero-shot, a yardstick only.", "", "ID tables of the unseen items:", ""]  # fmt: skip
    for r in records:
        q, status = r["id_table"]["stats"].get("quality", {}), r["id_quality"]
        facts = ", ".join(f"{k} {q[k]:.3f}" if isinstance(q[k], float) else f"{k} {q[k]}"
                          for k in ("word_in_text_share", "duplicate_base_share", "short_id_share", "mean_words",
                                    "mean_tokens", "second_attempt_share", "fallback_share") if k in q)  # fmt: skip
        flag = (f"**{status['status']}: {'; '.join(status['problems'])}**" if status["problems"]
                else "quality ok")  # fmt: skip
        lines.append(f"- {r['dataset']}: {r['id_table'].get('method', '')} IDs, table {r['id_table']['version']} "
                     f"({r['id_table']['items']} items, {r['idgen_seconds']:.1f} s): {facts}; {flag}")  # fmt: skip
    ref = reference_rows(records)
    lines += ["", "## Reference only: the paper's Table 7 (NOT our measurements, not comparable row by row)", "",
              PAPER_SOURCE, ""]  # fmt: skip
    if len(ref) > 1:
        lines += ["| " + " | ".join(ref[0][:-1]) + " |", "|" + "---|" * (len(ref[0]) - 1)]
        lines += ["| " + " | ".join(row[:-1]) + " |" for row in ref[1:]]
    else:
        lines.append("No evaluated dataset name matches a Table 7 dataset.")
    return "\n".join(lines) + "\n"


def _csv(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def write_zeroshot_tables(out: Path, records: list[dict[str, Any]]) -> dict[str, str]:
    paths = {
        "markdown": atomic_write(out / "zeroshot.md", zeroshot_markdown(records)),
        "csv": atomic_write(out / "zeroshot.csv", _csv(zeroshot_rows(records))),
        "reference_csv": atomic_write(out / "zeroshot.reference.csv", _csv(reference_rows(records))),
        "png": plot_zeroshot(records, out / "zeroshot.png"),
    }
    return {k: str(v) for k, v in paths.items()}


def plot_zeroshot(records: list[dict[str, Any]], path: Path) -> Path:
    """One panel per metric: per dataset ours with its 95% interval, most-popular (hatched: not zero-shot)
    and the exact random level (black tick). Our measurements only: no paper numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["dataset"] for r in records]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.4 * len(METRICS), 3.4))
    width = 0.38
    for ax, metric in zip(axes, METRICS, strict=True):
        xs = list(range(len(names)))
        ours = [r["metrics"][metric] for r in records]
        ci = [(r.get("intervals") or {}).get(metric, (v, v)) for r, v in zip(records, ours, strict=True)]
        err = [
            [v - lo for v, (lo, _) in zip(ours, ci, strict=True)],
            [hi - v for v, (_, hi) in zip(ours, ci, strict=True)],
        ]
        ax.bar(xs, ours, width, yerr=err, capsize=3, label="ours (zero-shot), 95% CI")
        pop = [((r.get("most_popular") or {}).get("metrics") or {}).get(metric, 0.0) for r in records]
        ax.bar([x + width for x in xs], pop, width, hatch="//", color="lightgray", edgecolor="gray",
               label="most-popular (own train; NOT zero-shot)")  # fmt: skip
        ax.scatter([x + width / 2 for x in xs], [r["random"][metric] for r in records], marker="_", s=400,
                   color="black", zorder=3, label="random (exact)")  # fmt: skip
        ax.set_xticks([x + width / 2 for x in xs], names, rotation=30)
        ax.set_title(f"{metric} (n = {', '.join(str(r['users']) for r in records)})", fontsize=8)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path)
