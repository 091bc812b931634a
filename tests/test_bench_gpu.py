"""`fusionrec bench gpu --cpu-smoke`: the GPU suite's script runs end to end on the CPU at tiny sizes, so a
broken script is caught here and not in minutes of device time; each line reaches --record as it is measured."""

from __future__ import annotations

import json
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
