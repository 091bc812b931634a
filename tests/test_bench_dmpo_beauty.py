"""bench dmpo_beauty's result lines: each model paired with the one it starts from, on the same pairs."""

from __future__ import annotations

import pytest
from fusionrec.bench import dmpo_beauty
from fusionrec.trainer.recipes.dmpo.loss import AUCResult

pytestmark = pytest.mark.unit


def _r(pos: list[float]) -> AUCResult:
    neg = [0.5] * len(pos)
    wins = sum(p > 0.5 for p in pos) / len(pos)
    return AUCResult(wins, wins, len(pos), 0, pos, neg)


def test_lines_pair_sft_with_base_and_dmpo_with_sft() -> None:
    scores = {"base": {"h": (_r([0.1, 0.9, 0.1, 0.9]), 2.0)}, "sft": {"h": (_r([0.9, 0.9, 0.1, 0.9]), 2.0)},
              "dmpo_k1": {"h": (_r([0.9, 0.9, 0.9, 0.9]), 4.0)}}  # fmt: skip
    logs = {"sft": [{"step": 1, "sft/loss": 2.0}, {"step": 2, "sft/loss": 1.5}],
            "dmpo_k1": [{"step": 1, "dmpo/loss": 0.69, "dmpo/reward_accuracy": 0.5, "dmpo/reward_margin": 0.0}]}  # fmt: skip
    res = dmpo_beauty.Results(scores, logs, {"sft": 10.0, "dmpo_k1": 20.0})
    out = dmpo_beauty.result_lines(res, dmpo_beauty.QUICK, {})
    auc = {x["model"]: x for x in out if x["bench"] == "dmpo_beauty_auc"}
    assert "baseline" not in auc["base"] and auc["base"]["eval_pairs_per_s"] == 2.0
    assert auc["sft"]["baseline_model"] == "base" and auc["sft"]["difference"] == 0.25
    assert auc["dmpo_k1"]["baseline_model"] == "sft" and auc["dmpo_k1"]["difference"] == 0.25
    assert auc["dmpo_k1"]["difference_ci95"][0] >= 0.0  # never worse on any resample of these 4 pairs
    train = {x["model"]: x for x in out if x["bench"] == "dmpo_beauty_train"}
    assert (train["sft"]["baseline"], train["sft"]["ours"]) == (2.0, 1.5)
    assert train["dmpo_k1"]["reward_accuracy_margin"] == [(1, 0.5, 0.0)]


def test_fit_lines_pair_the_last_epoch_with_the_first_over_the_same_groups() -> None:
    class Probe:  # epoch 0 = before training (the reference itself), then after epochs 1 and 2
        beta = 0.1
        epochs = [
            {"accuracy": [0.0, 0.0, 0.0, 0.0], "margin": [0.0, 0.0, 0.0, 0.0]},
            {"accuracy": [1.0, 0.0, 0.0, 1.0], "margin": [0.2, -0.1, -0.3, 0.1]},
            {"accuracy": [1.0, 1.0, 0.0, 1.0], "margin": [0.6, 0.3, -0.1, 0.4]},
        ]

    out = {x["metric"]: x for x in dmpo_beauty._fit_lines({"dmpo_k3": Probe()}, dmpo_beauty.FIT_QUICK, {})}
    acc, margin = out["reward_accuracy"], out["reward_margin"]
    assert (acc["baseline"], acc["ours"], acc["difference"], acc["n_groups"]) == (0.5, 0.75, 0.25, 4)
    assert acc["difference_ci95"][0] >= 0.0  # no group got worse: every resample's mean difference is >= 0
    assert (margin["baseline"], margin["ours"], margin["difference"]) == (-0.025, 0.3, 0.325)
    lo, hi = margin[
        "difference_ci95"
    ]  # per-group differences .4, .4, .2, .3: resampled means lie in [.2, .4]
    assert 0.2 <= lo < 0.325 < hi <= 0.4
    assert [e["reward_accuracy"] for e in acc["epochs"]] == [0.0, 0.5, 0.75]
