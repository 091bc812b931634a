"""The demo's verdict and curves: paired differences by hand, outcomes, and a PNG from real TensorBoard files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from fusionrec.cluster.results import paired_difference, per_user_metric
from fusionrec.launch.curves import plot_training_curves, read_scalars
from fusionrec.launch.verdict import pretraining_verdict, write_verdict, zeroshot_verdict


@pytest.mark.unit
def test_per_user_metric_by_hand() -> None:
    ranks = np.array([0, 1, 9, 10, -1])
    assert per_user_metric(ranks, "HR@10").tolist() == [1, 1, 1, 0, 0]
    ndcg = per_user_metric(ranks, "NDCG@10")
    assert ndcg.tolist() == pytest.approx([1.0, 1 / math.log2(3), 1 / math.log2(11), 0.0, 0.0])
    with pytest.raises(ValueError, match="MRR@10"):
        per_user_metric(ranks, "MRR@10")


@pytest.mark.unit
def test_paired_difference() -> None:
    # Identical models: every resample's difference is exactly 0.
    same = paired_difference([0, -1, 3], [0, -1, 3], "HR@10")
    assert same["difference"] == 0 and same["interval"] == [0.0, 0.0] and same["users"] == 3
    # A hits every user B misses and nothing else differs: the difference is the share of such users, and
    # every resample difference is >= 0.
    a, b = [0] * 30 + [-1] * 70, [-1] * 30 + [-1] * 70
    d = paired_difference(a, b, "HR@10")
    assert d["a"] == 0.3 and d["b"] == 0.0 and d["difference"] == pytest.approx(0.3)
    assert 0 < d["interval"][0] < 0.3 < d["interval"][1]
    assert paired_difference(a, b, "HR@10", seed=5) == paired_difference(a, b, "HR@10", seed=5)
    with pytest.raises(ValueError, match="same non-empty users"):
        paired_difference([0, 1], [0], "HR@10")


def _rec(ds: str, model: str, ranks: list[int]) -> dict:
    return {"dataset": ds, "model": model, "ranks": ranks}


@pytest.mark.unit
def test_outcomes_and_written_files(tmp_path: Path) -> None:
    better, worse = [0] * 40 + [-1] * 60, [-1] * 100
    records = [_rec("beauty", "idgenrec", better), _rec("beauty", "most_popular", worse),
               _rec("beauty", "sasrec", better), {"dataset": "beauty", "model": "random (exact)"}]  # fmt: skip
    pre = pretraining_verdict(records)
    assert [(v["model_a"], v["model_b"]) for v in pre] == [
        ("idgenrec", "most_popular"), ("sasrec", "most_popular"), ("idgenrec", "sasrec")]  # fmt: skip
    assert pre[0]["outcome"] == "IDGenRec beats most-popular"
    assert pre[2]["outcome"].startswith("no difference shown") and pre[2]["interval"] == [0.0, 0.0]
    flipped = pretraining_verdict([_rec("toys", "idgenrec", worse), _rec("toys", "most_popular", better)])
    assert flipped[0]["outcome"] == "most-popular beats IDGenRec"
    zs = {"dataset": "home", "users": 100, "metrics": {"HR@10": 0.05}, "intervals": {"HR@10": [0.02, 0.09]},
          "random": {"HR@10": 0.01}}  # fmt: skip
    low = {**zs, "dataset": "yelp", "intervals": {"HR@10": [0.005, 0.09]}}
    verdicts = zeroshot_verdict([zs, low])
    assert [v["outcome"] for v in verdicts] == [
        "above random",
        "NOT above random (interval reaches k / #items)",
    ]
    assert verdicts[0]["ratio"] == pytest.approx(5.0)
    lines = write_verdict(tmp_path, records, [zs])
    assert len(lines) == 4 and "IDGenRec beats most-popular" in lines[0] and "5.0x random" in lines[3]
    assert (tmp_path / "verdict.md").read_text().count("\n- ") == 3 and (tmp_path / "verdict.json").is_file()


@pytest.mark.unit
def test_training_curves_png_from_tensorboard(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "tb")) as w:
        for step in range(1, 6):
            w.add_scalar("rec/loss", 5.0 / step, step)
            w.add_scalar("rec/lr", 1e-3, step)
        w.add_scalar("valid/HR@10", 0.2, 5)
    scalars = read_scalars(tmp_path / "tb")
    assert scalars["rec/loss"] == [(s, pytest.approx(5.0 / s)) for s in range(1, 6)]
    png = plot_training_curves(tmp_path / "tb", tmp_path / "curves.png", "t")
    assert png.read_bytes()[:4] == b"\x89PNG" and not list(tmp_path.glob(".curves*"))
    with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
        read_scalars(tmp_path / "nothing")


def test_bench_demo_lines_carry_the_verdict_unchanged():
    """bench demo turns each verdict comparison into one line; numbers are copied, never recomputed."""
    from fusionrec.bench.demo import _stage_seconds, lines_from_verdict

    verdict = {
        "pretraining": [{"dataset": "toys", "model_a": "idgenrec", "model_b": "most_popular", "a": 0.25, "b": 0.03,
                         "difference": 0.22, "interval": [0.19, 0.25], "users": 1000, "outcome": "x beats y"}],
        "zeroshot": [{"dataset": "yelp", "value": 0.018, "interval": [0.011, 0.026], "random": 0.0087,
                      "ratio": 2.07, "users": 1000, "outcome": "above random"}],
    }  # fmt: skip
    pre, zs = lines_from_verdict(verdict, {"commit": "abc"})
    assert (pre["ours"], pre["baseline"], pre["difference"], pre["difference_ci95"]) == (
        0.25,
        0.03,
        0.22,
        [0.19, 0.25],
    )
    assert pre["model"] == "idgenrec vs most_popular" and pre["commit"] == "abc" and "ci95" not in pre
    assert (zs["ours"], zs["ci95"], zs["baseline"], zs["users"]) == (0.018, [0.011, 0.026], 0.0087, 1000)
    out = "x\n   stage times:  1/7 5s, 2/7 11s, 3/7 123s\n"
    assert _stage_seconds(out) == {"1/7": 5.0, "2/7": 11.0, "3/7": 123.0}
