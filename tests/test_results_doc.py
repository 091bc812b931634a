"""docs/results.md is generated from the committed raw benchmark lines, never typed by hand."""

from __future__ import annotations

import json

import pytest
from fusionrec.bench import _report

pytestmark = pytest.mark.unit


def test_results_page_is_exactly_what_the_lines_render():
    assert _report.OUT.read_text() == _report.render(), "run: python -m fusionrec.bench._report"


def test_every_line_says_where_and_when_it_was_measured():
    for path in sorted(_report.RESULTS.glob("*.jsonl")):
        for n, raw in enumerate(path.read_text().splitlines(), 1):
            line = json.loads(raw)
            missing = [k for k in ("bench", "commit", "date", "hardware") if k not in line]
            assert not missing, f"{path}:{n} lacks {missing}"


def test_a_row_shows_its_interval_and_sample_size(tmp_path):
    (tmp_path / "x.jsonl").write_text(json.dumps({
        "bench": "b", "ours": 0.0123, "ci95": [0.01, 0.015], "baseline": 0.0008, "ratio": 15.4, "unit": "HR@10",
        "users": 2000, "commit": "abc", "date": "2026-12-04T22:00:00+00:00", "hardware": "cpu x2"}) + "\n")  # fmt: skip
    text = _report.render(tmp_path)
    assert "| b | 0.0123 | [0.01, 0.015] | 0.0008 | 15.4 | HR@10 | 2000 | abc | 2026-12-04 | cpu x2 |" in text
