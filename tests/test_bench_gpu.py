"""`fusionrec bench gpu --cpu-smoke`: the GPU suite's script runs end to end on the CPU at tiny sizes, so a
broken script is caught here and not in minutes of device time; each line reaches --record as it is measured."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch


@pytest.mark.slow
def test_core_suite_cpu_smoke_measures_everything_and_records_each_line(
    shared_dir: Path, t5_tokenizer_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    from fusionrec.bench import gpu

    monkeypatch.setenv("FUSIONREC_SHARED_DIR", str(shared_dir))
    seen_on_disk = []
    add = gpu.Lines.add

    def add_and_look(self, **line):  # what --record holds right after each measurement
        add(self, **line)
        seen_on_disk.append(len(Path(self.path).read_text().splitlines()))

    monkeypatch.setattr(gpu.Lines, "add", add_and_look)
    record = tmp_path / "core.jsonl"
    lines = gpu.run(argv=["--cpu-smoke", "--record", str(record)])
    assert [ln["bench"] for ln in lines] == ["gpu_env", "gpu_decode", "gpu_decode", "gpu_idgen"]
    assert seen_on_disk == [1, 2, 3, 4]
    assert [json.loads(x) for x in record.read_text().splitlines()] == lines
    assert all(ln["smoke"] is True and ln["suite"] == "core" for ln in lines)
    decode = {ln["model"]: ln for ln in lines if ln["bench"] == "gpu_decode"}
    assert set(decode) == {"ours vs hf_batch_1", "ours vs hf_same_batch"}
    # our batched constrained search gives HF generate's top-20 items over all 12,101 Beauty IDs
    assert all(ln["match"] and ln["items"] == 12101 for ln in decode.values())
    idgen = lines[-1]
    assert idgen["match"] and idgen["items"] == gpu.PLANS["smoke"]["items"]


@pytest.mark.unit
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_without_cuda_and_without_smoke_nothing_is_measured(tmp_path: Path) -> None:
    from fusionrec.bench import gpu

    record = tmp_path / "core.jsonl"
    lines = gpu.run(argv=["--record", str(record)])
    assert lines == [
        {"bench": "gpu", "skipped": "no CUDA device (use --cpu-smoke to check the script on CPU)"}
    ]
    assert not record.exists()


@pytest.mark.slow
def test_quality_suite_cpu_smoke_runs_bench_quality_without_ray(
    shared_dir: Path, t5_tokenizer_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """The GPU image has no Ray: with `import ray` failing in this process and in every child it starts, the
    quality suite still prepares the corpus, trains SASRec and the recipe (1 rank), draws the validation
    curve and scores the test users in process; every model of the test stage is scored on the same users."""
    from fusionrec.bench import gpu

    blocked = tmp_path / "no-ray"
    (blocked / "ray").mkdir(parents=True)
    (blocked / "ray" / "__init__.py").write_text(
        'raise ImportError("ray is blocked: the GPU image has none")\n'
    )
    monkeypatch.setenv("PYTHONPATH", f"{blocked}:{os.environ.get('PYTHONPATH', '')}")
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")] + ["ray"]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setenv("FUSIONREC_SHARED_DIR", str(shared_dir))
    record, cache = tmp_path / "quality.jsonl", tmp_path / "cache"
    lines = gpu.run(
        argv=["--suite", "quality", "--cpu-smoke", "--cache", str(cache), "--record", str(record)]
    )
    assert [json.loads(x) for x in record.read_text().splitlines()] == lines
    test = {ln["model"]: ln for ln in lines if ln["bench"] == "quality_test"}
    assert set(test) == {"idgenrec", "sasrec", "most_popular", "random (exact)", "transitions"}
    assert {ln["users"] for ln in test.values()} == {40}
    curve = [ln for ln in lines if ln["bench"] == "quality_curve" and ln["model"] == "idgenrec"]
    assert curve and sum(ln["selected"] for ln in curve) == 1 and {ln["users"] for ln in curve} == {20}
    stages = cache / "idgenrec_beauty_gpu-quick"
    sasrec = json.loads((stages / "sasrec.json").read_text())
    assert sasrec["setting"].endswith("device cpu") and sasrec["epochs"] == 2
    assert "train.optim.total_steps=90" in lines[-1]["setting"]  # the variant's GPU schedule for 0.1 minutes
    assert json.loads((cache / "corpus" / "manifest.json").read_text())  # prepared without Ray Data


@pytest.mark.slow
def test_train_suite_cpu_smoke_compares_deepspeed_with_the_plain_loop(
    shared_dir: Path, t5_tokenizer_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """Three loops from the same weights on the same fixed batch: the first loss agrees (bf16 rounding apart:
    autocast in the plain loop, bf16 weights in DeepSpeed), every loop learns on the repeated batch, and the
    overhead lines are computed from the loops' own rates."""
    from fusionrec.bench import gpu

    monkeypatch.setenv("FUSIONREC_SHARED_DIR", str(shared_dir))
    record = tmp_path / "train.jsonl"
    lines = gpu.run(argv=["--suite", "train", "--cpu-smoke", "--record", str(record)])
    assert [json.loads(x) for x in record.read_text().splitlines()] == lines
    loops = {ln["model"]: ln for ln in lines if ln["bench"] == "gpu_train"}
    assert list(loops) == ["plain", "zero1", "zero2"]
    firsts = [ln["first_loss"] for ln in loops.values()]
    assert max(firsts) - min(firsts) < 0.05 * firsts[0]
    assert all(ln["last_loss"] < ln["first_loss"] for ln in loops.values())
    assert all(
        ln["step_gflop"] > 0 and ln["mfu"] > 0 and ln["host_syncs_per_step"] is None for ln in loops.values()
    )
    over = {ln["model"]: ln["ours"] for ln in lines if ln["bench"] == "gpu_train_overhead"}
    for stage in ("zero1", "zero2"):
        assert over[f"{stage} vs plain"] == pytest.approx(
            1 - loops[stage]["ours"] / loops["plain"]["ours"], abs=0.01
        )


@pytest.mark.integration
def test_llm_suite_cpu_smoke_runs_dmpo_then_sft_on_one_zero3_engine(tmp_path: Path, monkeypatch) -> None:
    """The 7B suite's script at a tiny shape: needs no ../shared, the precomputed reference makes DMPO's first
    loss ln 2 (the ZeRO-3 training forward equals the precompute's), both losses fall on the fixed batch, and
    the memory prediction is computed for each loop's own rows (peak memory is CUDA-only: None here)."""
    import math

    from fusionrec.bench import _gpu_llm, gpu

    monkeypatch.setenv("FUSIONREC_SHARED_DIR", str(tmp_path / "absent"))
    record = tmp_path / "llm.jsonl"
    lines = gpu.run(argv=["--suite", "llm", "--cpu-smoke", "--record", str(record)])
    assert [json.loads(x) for x in record.read_text().splitlines()] == lines
    assert [ln.get("model") for ln in lines] == [None, "dmpo reference precompute", "dmpo k=3", "sft"]
    loops = {ln["model"]: ln for ln in lines[2:]}
    plan = _gpu_llm.PLANS["smoke"]
    assert loops["dmpo k=3"]["first_loss"] == pytest.approx(math.log(2), abs=2e-3)
    assert all(ln["last_loss"] < ln["first_loss"] for ln in loops.values())
    assert loops["dmpo k=3"]["rows"] == plan["micro_batch"] * (1 + plan["k"]) and loops["sft"]["rows"] == 2
    for ln in loops.values():
        assert ln["ours"] == pytest.approx(ln["rows"] * plan["seq_len"] / ln["step_s"], rel=0.01)
        assert ln["peak_gib"] is None and ln["predicted_gib"] >= 0 and ln["zero_stage"] == 3
    # the memory model's adapter count is what peft really trains
    assert lines[1]["trained_params"] == lines[1]["lora_params"]
    assert lines[1]["lora_params"] == _gpu_llm.TINY.lora_params(plan["rank"], _gpu_llm.ALL_LINEAR)


@pytest.mark.unit
def test_gpu_tests_outcomes_are_read_from_pytest_verbose_lines() -> None:
    """A cut-off `pytest -v` still says which tests finished and how; other lines are not mistaken for them."""
    from fusionrec.bench.gpu import pytest_outcomes

    out = (
        "collected 3 items\n"
        "tests/test_trie.py::test_a PASSED                          [ 33%]\n"
        "tests/test_trie.py::test_b[cuda-x] SKIPPED (needs a CUDA device) [ 66%]\n"
        "tests/test_x.py::test_c FAILED                              [100%]\n"
        "FAILED tests/test_x.py::test_c - assert 1 == 2\n"
    )
    assert pytest_outcomes(out) == {
        "tests/test_trie.py::test_a": "PASSED",
        "tests/test_trie.py::test_b[cuda-x]": "SKIPPED",
        "tests/test_x.py::test_c": "FAILED",
    }


@pytest.mark.unit
def test_gpu_session_runs_suites_in_order_within_their_limits_and_skips_what_no_longer_fits(tmp_path) -> None:
    """launch/gpu_session.sh with a stand-in gpu_bench.sh that records its suite and limits (core takes 1 s,
    train 16 s and fails): each suite gets min(own limit, what is left), core's tests get its limit less the
    measurements' share, a suite with under 60 s left is skipped and said so, a failing suite does not stop
    the next one. The margins only grow under load: train starts ~74 s before the end, llm ~58 s at most."""
    import shutil
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "launch").mkdir()
    shutil.copy(repo / "launch" / "gpu_session.sh", tmp_path / "launch")
    (tmp_path / "launch" / "gpu_bench.sh").write_text(
        'echo "$1 $FUSIONREC_GPU_LIMIT_S $FUSIONREC_GPU_TESTS_LIMIT_S" >> "$OUT/calls"\n'
        'if [ "$1" = train ]; then sleep 16; exit 1; fi\nsleep 1\n'
    )
    env = {**os.environ, "OUT": str(tmp_path / "out"), "FUSIONREC_GPU_SESSION_S": "75",
           "FUSIONREC_GPU_LIMIT_CORE": "200"}  # fmt: skip
    proc = subprocess.run(["bash", str(tmp_path / "launch" / "gpu_session.sh"), "core", "train", "llm"],
                          env=env, capture_output=True, text=True)  # fmt: skip
    calls = (tmp_path / "out" / "calls").read_text().split("\n")[:-1]
    assert calls[0] == "core 75 30"  # the session's 75 s < core's 200; 75 <= 150: its tests get 30 s
    assert calls[1].startswith("train 7") and len(calls) == 2  # 73-74 s left: train's 120 capped to it
    log = (tmp_path / "out" / "gpu_session.log").read_text()
    assert "train rc=1" in log and "llm skipped" in log and proc.returncode == 1
