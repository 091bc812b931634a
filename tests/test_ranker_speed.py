"""bench/ranker_speed.py: the speed matrix in its smallest form — two real 2-rank launches of the dmpo recipe.

Checks the numbers the lines are built from, never their speed: the token count of the timed step equals a
count made by hand from the encoded groups (non-pad tokens of all 1 + k sequences, both ranks), padding is
not counted, the reference model's forward is not counted again, and the first loss is ln 2 (policy ==
reference at step 0) under both ZeRO stages.
"""

from __future__ import annotations

import math

import pytest
from fusionrec.bench import ranker_speed as rs
from fusionrec.trainer.models.causal_lm import CausalLMConfig, load_tokenizer
from fusionrec.trainer.recipes.dmpo.data import TruncationStats, encode_groups, group_records, load_dmpo_file
from fusionrec.trainer.recipes.dmpo.loss import collate_groups, flatten_groups
from test_dmpo import _write_dpo_file

K = 2
# 1 warm-up step (epoch 1), then 1 timed step = epoch 2: 2 ranks x 1 group each = every group once.
MINI = rs.ModelPlan(
    "tiny", max_length=512, micro_sft=1, micro_dmpo=1, lora_rank=8, lora_alpha=16, warmup=1, timed=1
)
PLAN = rs.SpeedPlan(models=(MINI,), runs=("dmpo-refmodel",), zeros=(2, 3), k=K, note="test")


def _hand_count(dpo_file: str) -> tuple[int, int]:
    """(non-pad tokens, padded tokens) of every sequence of the groups one epoch uses."""
    tok = load_tokenizer(CausalLMConfig(name_or_path="tiny"))
    groups = group_records(load_dmpo_file(dpo_file), K, dpo_file)[: PLAN.nproc * MINI.micro_dmpo * MINI.timed]
    encoded = encode_groups(tok, groups, MINI.max_length, TruncationStats())
    real = sum(len(pair.prompt_ids) + len(pair.answer_ids) for pair in flatten_groups(encoded))
    padded = sum(collate_groups([g], tok.pad_token_id)["input_ids"].numel() for g in encoded)
    return real, padded


@pytest.mark.distributed
def test_speed_matrix_lines_count_real_tokens(tmp_path):
    dpo = tmp_path / "dpo.json"
    _write_dpo_file(dpo, 4, K)
    lines, results = rs.run_matrix(PLAN, str(tmp_path / "unused-sft.json"), str(dpo), tmp_path)

    real, padded = _hand_count(str(dpo))
    assert real < padded  # the groups' sequences differ in length, so counting padding would show
    for setting, r in results.items():
        assert not isinstance(r, str), f"{setting.key}: the launch failed: {r}"
        assert (r.tokens, r.steps) == (real, 1), setting.key
        assert r.losses[0] == pytest.approx(math.log(2), abs=1e-5)
        assert len(r.rss_mb_per_rank) == 2 and r.peak_rss_mb == max(r.rss_mb_per_rank)
        assert 0 < r.import_rss_mb <= r.setup_rss_mb <= r.peak_rss_mb  # one monotonic high-water mark
        assert r.end_rss_mb > r.import_rss_mb  # VmRSS: the kernel's RSS counters can run ~1 MB past ru_maxrss
        assert r.seconds > 0 and r.truncated == 0

    assert [line["bench"] for line in lines] == [
        "ranker-tiny-dmpo-k2-zero3-refmodel-tokens_per_s",
        "ranker-tiny-dmpo-k2-zero3-refmodel-peak_rss_mb",
    ]
    z3, z2 = (results[rs.Setting(MINI, "dmpo-refmodel", z)] for z in (3, 2))
    speed, memory = lines
    assert speed["ours"] == z3.tokens_per_s and speed["baseline"] == z2.tokens_per_s
    assert speed["ratio"] == pytest.approx(speed["ours"] / speed["baseline"])
    assert speed["unit"] == "tokens/s" and speed["tokens"] == speed["baseline_tokens"] == real
    assert memory["ours"] == z3.peak_rss_mb and memory["baseline"] == z2.peak_rss_mb
    assert memory["ratio"] == pytest.approx(z3.peak_rss_mb / z2.peak_rss_mb)
    assert all(line["ours_setting"] == "tiny-dmpo-refmodel-zero3" for line in lines)
    assert all(line["baseline_setting"] == "tiny-dmpo-refmodel-zero2" for line in lines)


@pytest.mark.unit
def test_a_failed_setting_costs_only_its_own_lines():
    ok = rs.Measured(1000, 2, 0.5, 3.0, 500.0, [500.0, 490.0], [0.69], 0, 400.0, 450.0, 480.0)
    z3, z2 = rs.Setting(MINI, "sft", 3), rs.Setting(MINI, "sft", 2)
    [line] = rs.pair_lines(z3, z2, {z3: "boom", z2: ok}, "ranker-tiny-sft-zero3", PLAN)
    assert line["error"] == {"tiny-sft-zero3": "boom"} and line["ours"] is None
    speed, memory = rs.pair_lines(z2, z2, {z2: ok}, "x", PLAN)
    assert speed["ours"] == speed["baseline"] == 2000.0 and speed["s_per_step"] == 0.25
    assert memory["ours"] == 500.0 and memory["ratio"] == 1.0
