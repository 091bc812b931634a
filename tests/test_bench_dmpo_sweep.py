"""bench dmpo_sweep: validation users are the last training users (never trained on), and every setting's lines
carry its lr, beta and whether validation selected it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fusionrec.bench import dmpo_sweep
from fusionrec.bench.dmpo_beauty import Results
from fusionrec.trainer.recipes.dmpo.loss import AUCResult

pytestmark = pytest.mark.unit


def _row(i: int) -> dict:
    words = "product" if i % 2 else "item"
    instruction = (
        "You are an assistant working on product recommendations. Here is the user's history of products they "
        f"have bought:  <Title:History {i}> . Rank the likelihood of the user buying the two products  "
        f"<Title:Good {words} {i}>  and  <Title:Bad {i}> ."
    )
    return {
        "instruction": instruction,
        "input": "",
        "output": [
            f" <Title:Good {words} {i}> ,  <Title:Bad {i}> ",
            f" <Title:Bad {i}> ,  <Title:Good {words} {i}> ",
        ],
    }


def test_validation_pairs_are_the_last_users_and_never_overlap_the_trained_ones(tmp_path: Path) -> None:
    (tmp_path / "rec_amazon_beauty_dpo_ranking_1.json").write_text(json.dumps([_row(i) for i in range(10)]))
    pairs = dmpo_sweep.validation_pairs(tmp_path, n_valid=3, n_trained=7)
    assert [p.prompt.candidates[0].strip() for p in pairs] == ["<Title:Good product 7>", "<Title:Good item 8>",
                                                                 "<Title:Good product 9>"]  # fmt: skip
    with pytest.raises(ValueError, match="4 validation users \\+ 7 trained on > 10 training users"):
        dmpo_sweep.validation_pairs(tmp_path, n_valid=4, n_trained=7)


def _r(pos: list[float]) -> AUCResult:
    wins = sum(p > 0.5 for p in pos) / len(pos)
    return AUCResult(wins, wins, len(pos), 0, pos, [0.5] * len(pos))


def test_sweep_lines_pair_every_setting_with_sft_and_mark_the_selected_one() -> None:
    scores = {"sft": {"beauty_valid": (_r([0.9, 0.1]), 1.0), "beauty_heldout": (_r([0.9, 0.1, 0.1]), 1.0)},
              "a": {"beauty_valid": (_r([0.9, 0.9]), 1.0), "beauty_heldout": (_r([0.9, 0.9, 0.1]), 1.0)},
              "b": {"beauty_valid": (_r([0.1, 0.1]), 1.0)}}  # fmt: skip
    res = Results(scores, {}, {"sft": 1.0, "a": 2.0, "b": 3.0})
    settings = {"a": {"lr": 1e-4, "beta": 0.1}, "b": {"lr": 3e-4, "beta": 0.5}}
    out = dmpo_sweep.sweep_lines(res, dmpo_sweep.QUICK, settings, "a", {})
    rows = {(x["model"], x["dataset"]): x for x in out}
    assert {x["bench"] for x in out} == {"dmpo_sweep_auc"}
    assert rows[("a", "beauty_heldout")]["selected"] and not rows[("b", "beauty_valid")]["selected"]
    assert (
        rows[("a", "beauty_valid")]["difference"] == 0.5
        and rows[("a", "beauty_valid")]["baseline_model"] == "sft"
    )
    assert rows[("a", "beauty_heldout")]["difference"] == pytest.approx(1 / 3, abs=1e-4)
    assert (rows[("b", "beauty_valid")]["lr"], rows[("b", "beauty_valid")]["beta"]) == (3e-4, 0.5)
    assert ("b", "beauty_heldout") not in rows  # only the selected setting meets the test users
