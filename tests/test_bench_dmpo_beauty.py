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
    out = dmpo_beauty._lines(scores, logs, {"sft": 10.0, "dmpo_k1": 20.0}, dmpo_beauty.QUICK, {})
    auc = {x["model"]: x for x in out if x["bench"] == "dmpo_beauty_auc"}
    assert "baseline" not in auc["base"] and auc["base"]["eval_pairs_per_s"] == 2.0
    assert auc["sft"]["baseline_model"] == "base" and auc["sft"]["difference"] == 0.25
    assert auc["dmpo_k1"]["baseline_model"] == "sft" and auc["dmpo_k1"]["difference"] == 0.25
    assert auc["dmpo_k1"]["difference_ci95"][0] >= 0.0  # never worse on any resample of these 4 pairs
    train = {x["model"]: x for x in out if x["bench"] == "dmpo_beauty_train"}
    assert (train["sft"]["baseline"], train["sft"]["ours"]) == (2.0, 1.5)
    assert train["dmpo_k1"]["reward_accuracy_margin"] == [(1, 0.5, 0.0)]
