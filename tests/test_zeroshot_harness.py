"""The zero-shot harness' honesty pieces, without a model: ID-table quality gate (torch-free), bootstrap
intervals from the evaluator's rank histogram, the exact random row, declared platforms, and the paper's
numbers kept out of our table and plot."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.unit

KS = (5, 10)
METRICS = ["HR@5", "HR@10", "NDCG@5", "NDCG@10"]


# ------------------------------------------------------------------------------------------------ ID quality


def test_quality_module_is_torch_free():
    code = (
        "import sys; from fusionrec.trainer.idgen import quality as m; "
        "assert 'torch' not in sys.modules; print(m.id_quality({'a': 'red cream'}, {'a': 'red cream'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "'word_in_text_share': 1.0" in out.stdout


def test_degenerate_table_refused_with_values_and_thresholds_or_warned():
    from fusionrec.trainer.idgen.quality import QualityThresholds, check_quality, id_quality

    texts = {f"i{n}": f"title: gentle shampoo {n}; brand: acme" for n in range(6)}
    junk = dict(zip(texts, ["tttttttt", "eeeesy", "nenn", "tttttttt 2", "eeeesy 2", "e"], strict=True))
    q = id_quality(junk, texts)
    assert q["word_in_text_share"] == pytest.approx(0.0)
    with pytest.raises(ValueError) as err:
        check_quality(q, QualityThresholds(), "refuse", "dataset 'shop'", hint="Set warn.")
    msg = str(err.value)
    for part in ("dataset 'shop': degenerate ID table", "word_in_text_share 0.000 < min_word_in_text 0.5",
                 "duplicate_base_share 0.333 > max_duplicate_base 0.2", "'min_word_in_text': 0.5", "Set warn."):  # fmt: skip
        assert part in msg, msg
    assert "short_id_share 0.167 >" not in msg  # 1 of 6 IDs short ("e"): under 0.2, not a problem
    problems = check_quality(q, QualityThresholds(), "warn", "dataset 'shop'")
    assert len(problems) == 2
    titles = {i: " ".join(t.split()[1:3]) + f" {n}" for n, (i, t) in enumerate(texts.items())}
    assert check_quality(id_quality(titles, texts), QualityThresholds(), "refuse", "x") == []
    with pytest.raises(ValueError, match="unknown id quality thresholds"):
        QualityThresholds.from_overrides({"min_words": 1})


def test_config_quality_mode_and_thresholds_validated():
    from fusionrec.cluster.zeroshot import ZeroShotConfig

    assert ZeroShotConfig().id_quality == "refuse"
    assert (
        ZeroShotConfig(id_quality_thresholds={"min_word_in_text": 0.3}).thresholds().min_word_in_text == 0.3
    )
    with pytest.raises(ValueError, match="id_quality must be one of"):
        ZeroShotConfig(id_quality="ignore")
    with pytest.raises(ValueError, match="must be in \\[0, 1\\]"):
        ZeroShotConfig(id_quality_thresholds={"max_short_ids": 2.0})


# ------------------------------------------------------------------------------------------------ intervals


def _sums(ranks: list[int], depth: int = 10):
    import torch
    from fusionrec.trainer.metrics import MetricSums

    return MetricSums._from_rank_tensor(torch.tensor(ranks), KS, depth, None)


def test_bootstrap_interval_from_histogram_matches_a_per_user_bootstrap():
    """Resampling the rank histogram multinomially is resampling users: same interval as a direct bootstrap
    over per-user values (up to Monte-Carlo noise), containing the point estimate; seeded."""
    import torch
    from fusionrec.cluster.results import metric_intervals
    from fusionrec.trainer.metrics import hit_at_k, ndcg_at_k

    rng = np.random.default_rng(3)
    ranks = [int(r) if r < 10 else -1 for r in rng.integers(0, 40, size=300)]
    sums = _sums(ranks)
    ci = metric_intervals(sums, METRICS, resamples=4000)
    assert ci == metric_intervals(sums, METRICS, resamples=4000)  # seeded
    point = sums.to_dict()
    per_user = {f"HR@{k}": hit_at_k(torch.tensor(ranks), k).numpy() for k in KS}
    per_user |= {f"NDCG@{k}": ndcg_at_k(torch.tensor(ranks), k).numpy() for k in KS}
    for m in METRICS:
        lo, hi = ci[m]
        assert lo <= point[m] <= hi
        means = per_user[m][rng.integers(0, 300, size=(4000, 300))].mean(axis=1)
        ref = np.quantile(means, [0.025, 0.975])
        assert lo == pytest.approx(ref[0], abs=0.012) and hi == pytest.approx(ref[1], abs=0.012)
    everyone = metric_intervals(_sums([0] * 50), ["HR@5"])
    assert everyone == {"HR@5": [1.0, 1.0]}
    with pytest.raises(ValueError, match="no interval"):
        metric_intervals(sums, ["MRR@10"])


# ------------------------------------------------------------------------------------------------ random row


def _evalset(n_items: int, histories: list[list[int]], targets: list[int]):
    from fusionrec.cluster.evalset import EvalSet

    offsets = np.zeros(len(histories) + 1, dtype=np.int64)
    np.cumsum([len(h) for h in histories], out=offsets[1:])
    return EvalSet("shop", [f"i{n}" for n in range(n_items)], [f"u{n}" for n in range(len(histories))],
                   np.asarray([i for h in histories for i in h], dtype=np.int64), offsets,
                   np.asarray(targets, dtype=np.int64))  # fmt: skip


def test_random_row_exact_without_and_with_history_exclusion():
    from fusionrec.cluster.results import random_ranking_metrics

    data = _evalset(20, [[1, 2, 2], [3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]], [0, 3, 17])
    r = random_ranking_metrics(data, KS, exclude_history=False)
    assert r["HR@5"] == pytest.approx(5 / 20) and r["HR@10"] == pytest.approx(10 / 20)
    assert r["NDCG@10"] == pytest.approx(sum(1 / math.log2(i + 2) for i in range(10)) / 20)
    assert r["items"] == 20 and r["mean_candidates"] == 20
    # Excluding history: u0 ranks 20-2 = 18 candidates; u1's target is in its history (never hit);
    # u2 ranks 20-13 = 7 candidates, so HR@10 = 1 for it.
    x = random_ranking_metrics(data, KS, exclude_history=True)
    assert x["HR@5"] == pytest.approx((5 / 18 + 0 + 5 / 7) / 3)
    assert x["HR@10"] == pytest.approx((10 / 18 + 0 + 1) / 3)
    g = [1 / math.log2(i + 2) for i in range(10)]
    assert x["NDCG@10"] == pytest.approx((sum(g) / 18 + 0 + sum(g[:7]) / 7) / 3)
    # The expectation equals the average over random permutations (Monte-Carlo, loose).
    rng, hits = np.random.default_rng(0), []
    for _ in range(4000):
        for h, t in zip(([1, 2, 2], [3], list(range(4, 17))), (0, 3, 17), strict=True):
            cands = [i for i in rng.permutation(20) if i not in set(h)]
            hits.append(t in cands[:10])
    assert np.mean(hits) == pytest.approx(x["HR@10"], abs=0.02)


# ------------------------------------------------------------------------------------------------ platforms


def _corpus(tmp_path, datasets: list[dict], pretrain: list[str]):
    (tmp_path / "config.json").write_text(
        json.dumps({"datasets": datasets, "fusion": {"pretrain": pretrain}})
    )
    return tmp_path


def test_scenario_from_declared_platform_never_the_format(tmp_path):
    from fusionrec.cluster.zeroshot import UNDECLARED, scenarios

    ds = [{"name": "beauty", "format": "p5", "platform": "amazon"},
          {"name": "toys", "format": "p5", "platform": ""},  # P5 format, undeclared: NOT "amazon"
          {"name": "sports", "format": "amazon2014", "platform": "Amazon"},
          {"name": "yelp", "format": "p5", "platform": "yelp"},  # P5-format Yelp: inter-platform
          {"name": "ml", "format": "movielens"}]  # fmt: skip
    got = scenarios(_corpus(tmp_path, ds, ["beauty"]))
    assert got == {"toys": UNDECLARED, "sports": "intra-platform", "yelp": "inter-platform", "ml": UNDECLARED}
    ds[0]["platform"] = ""
    got = scenarios(_corpus(tmp_path, ds, ["beauty"]))
    assert got["yelp"] == got["sports"] == "unknown: pretraining platform undeclared (beauty)"
    assert scenarios(tmp_path / "nowhere") == {}


def test_no_format_to_platform_table():
    import fusionrec.cluster.zeroshot as zs

    assert not hasattr(zs, "PLATFORM")


# ------------------------------------------------------------------------------------------------ tables


def _record(name: str, paper: bool, warned: bool = False) -> dict:
    from fusionrec.cluster.results import metric_intervals, random_ranking_metrics
    from fusionrec.cluster.zeroshot import INTERVAL, PAPER_SOURCE, paper_numbers

    sums = _sums([0, 3, -1, -1, 7, -1, -1, -1])
    data = _evalset(40, [[1, 2]] * 8, [0] * 8)
    base = {"dataset": name, "users": 8, "seconds": 2.0, "users_per_s": 4.0, "metrics": sums.to_dict(),
            "intervals": metric_intervals(sums, METRICS), "interval": INTERVAL}  # fmt: skip
    problems = ["word_in_text_share 0.010 < min_word_in_text 0.5"] if warned else []
    return {**base, "scenario": "inter-platform", "users_selection": {"selection": "all"}, "idgen_seconds": 1.0,
            "random": random_ranking_metrics(data, KS, False),
            "most_popular": {**base, "metrics": _sums([1, -1, -1, -1, -1, -1, -1, -1]).to_dict()},
            "id_table": {"version": "r0-abc", "items": 40, "method": "title",
                         "stats": {"quality": {"word_in_text_share": 0.01 if warned else 1.0}}},
            "id_quality": {"problems": problems, "status": "DEGENERATE (warned)" if warned else "ok"},
            "paper_reference": {"source": PAPER_SOURCE, "numbers": paper_numbers(name)} if paper else None}  # fmt: skip


def test_tables_show_intervals_random_and_keep_the_paper_apart(tmp_path):
    from fusionrec.cluster.zeroshot_tables import write_zeroshot_tables, zeroshot_markdown

    records = [_record("yelp", paper=True), _record("shop", paper=False, warned=True)]
    write_zeroshot_tables(tmp_path, records)
    md = (tmp_path / "zeroshot.md").read_text()
    ours, ref = md.split("## Reference only")
    assert md == zeroshot_markdown(records)
    assert "0.0329" not in ours and "0.0329" in ref and "19 OTHER Amazon" in ref
    assert "| yelp | inter-platform | ours (zero-shot, all) | 0.2500 [" in ours
    assert "| yelp |  | random ranking (exact expectation) | 0.1250 | 0.2500 |" in ours
    assert "most-popular (fit on yelp's own train split; not zero-shot)" in ours
    assert "**DEGENERATE (warned): word_in_text_share 0.010 < min_word_in_text 0.5**" in ours
    rows = list(csv.DictReader(io.StringIO((tmp_path / "zeroshot.csv").read_text())))
    assert not any("paper" in k.lower() for k in rows[0]) and len(rows) == 6
    first = rows[0]
    assert first["row"].startswith("ours") and first["zero_shot"] == "yes" and first["users"] == "8"
    assert float(first["HR@5 ci95 lo"]) <= float(first["HR@5"]) <= float(first["HR@5 ci95 hi"])
    assert rows[1]["zero_shot"] == "n/a" and rows[1]["HR@10"] == "0.2500" and rows[1]["HR@10 ci95 lo"] == ""
    assert rows[2]["zero_shot"] == "no" and rows[5]["id_quality"] == "DEGENERATE (warned)"
    reference = list(csv.reader(io.StringIO((tmp_path / "zeroshot.reference.csv").read_text())))
    assert [r[1] for r in reference[1:]] == ["paper IDGenRec (Table 7)", "paper UniSRec (Table 7)"]
    assert all("19 other Amazon datasets" in r[-1] for r in reference[1:])
    assert (tmp_path / "zeroshot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
