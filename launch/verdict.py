"""The demo's verdict: which model beats which, by how much, with paired 95% intervals over the same users.

"A beats B" means the percentile-bootstrap interval of the per-user difference A - B (the same users, the
same metric) lies above zero; "zero-shot above random" means the model's own interval lies above the exact
random expectation k / #items. Inputs are the evaluation records of `evaluate_checkpoint` and
`run_zeroshot`, which carry every user's target rank (`ranks`, in the same user order for every model of a
dataset), so nothing is re-scored here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusionrec.cluster.results import paired_difference
from fusionrec.fileio import atomic_write_text

LABELS = {"idgenrec": "IDGenRec", "most_popular": "most-popular", "sasrec": "SASRec"}
PAIRS = (("idgenrec", "most_popular"), ("sasrec", "most_popular"), ("idgenrec", "sasrec"))


def _outcome(diff: dict[str, Any], a: str, b: str) -> str:
    lo, hi = diff["interval"]
    if lo > 0:
        return f"{LABELS[a]} beats {LABELS[b]}"
    if hi < 0:
        return f"{LABELS[b]} beats {LABELS[a]}"
    return "no difference shown (the interval contains 0)"


def pretraining_verdict(records: Sequence[dict[str, Any]], metric: str = "HR@10") -> list[dict[str, Any]]:
    """Every pair of PAIRS present on a dataset, compared on that dataset's users."""
    by_ds: dict[str, dict[str, dict]] = {}
    for r in records:
        by_ds.setdefault(r["dataset"], {})[r["model"]] = r
    out = []
    for ds, models in sorted(by_ds.items()):
        for a, b in PAIRS:
            if a in models and b in models:
                diff = paired_difference(models[a]["ranks"], models[b]["ranks"], metric)
                out.append(
                    {"dataset": ds, "model_a": a, "model_b": b, **diff, "outcome": _outcome(diff, a, b)}
                )
    return out


def zeroshot_verdict(records: Sequence[dict[str, Any]], metric: str = "HR@10") -> list[dict[str, Any]]:
    """Each held-out platform: the model's interval against the exact random expectation."""
    out = []
    for r in records:
        value, (lo, hi) = r["metrics"][metric], r["intervals"][metric]
        rand = r["random"][metric]
        above = lo > rand
        out.append({"dataset": r["dataset"], "metric": metric, "value": value, "interval": [lo, hi],
                    "random": rand, "ratio": value / rand if rand else None, "users": r["users"],
                    "outcome": "above random" if above else "NOT above random (interval reaches k / #items)"})  # fmt: skip
    return out


def verdict_lines(pre: Sequence[dict[str, Any]], zs: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for v in pre:
        lo, hi = v["interval"]
        lines.append(f"{v['dataset']:>8}: {LABELS[v['model_a']]} {v['a']:.4f} vs {LABELS[v['model_b']]} "
                     f"{v['b']:.4f} ({v['metric']}, {v['users']:,} users): difference "
                     f"{v['difference']:+.4f} [{lo:+.4f}, {hi:+.4f}] -> {v['outcome']}")  # fmt: skip
    for v in zs:
        lo, hi = v["interval"]
        ratio = f", {v['ratio']:.1f}x random" if v["ratio"] else ""
        lines.append(f"{v['dataset']:>8}: zero-shot IDGenRec {v['value']:.4f} [{lo:.4f}, {hi:.4f}] vs random "
                     f"{v['random']:.4f} ({v['metric']}, {v['users']:,} users{ratio}) -> {v['outcome']}")  # fmt: skip
    return lines


def write_verdict(out: Path, eval_records: Sequence[dict], zs_records: Sequence[dict]) -> list[str]:
    """verdict.json + verdict.md in `out`; returns the lines printed by the demo."""
    pre = pretraining_verdict(eval_records)
    zs = zeroshot_verdict(zs_records)
    lines = verdict_lines(pre, zs)
    atomic_write_text(out / "verdict.json", json.dumps({"pretraining": pre, "zeroshot": zs}, indent=2))
    atomic_write_text(out / "verdict.md", "\n".join(f"- {line.strip()}" for line in lines) + "\n")
    return lines
