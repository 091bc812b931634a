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


def test_a_row_names_its_model_and_the_run_of_its_variant(tmp_path):
    base = {"ours": 0.5, "commit": "c", "date": "2026-12-06T00:00:00+00:00", "hardware": "cpu x2"}
    rows = [{**base, "bench": "q", "model": "idgenrec", "variant": "titles3", "dataset": "beauty"},
            {**base, "bench": "q", "variant": "collab"}, {**base, "bench": "q", "model": "sasrec"}]  # fmt: skip
    (tmp_path / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = _report.render(tmp_path)
    assert "| q (idgenrec; run titles3) [beauty] | 0.5 |" in text
    assert "| q (run collab) | 0.5 |" in text and "| q (sasrec) | 0.5 |" in text


def test_docs_result_blocks_are_what_their_lines_render():
    for doc in _report.DOCS:
        text = doc.read_text()
        assert _report.BLOCK.search(text), f"{doc} is listed in DOCS but has no result block"
        assert text == _report.fill_blocks(text), f"{doc} is stale: run python -m fusionrec.bench._report"


def test_a_result_block_keeps_its_bench_prefix_and_names_its_command(tmp_path):
    rows = [{"bench": "a-x", "ours": 0.5, "commit": "c1", "date": "2026-12-06T00:00:00+00:00", "hardware": "cpu x2",
             "command": "python -m fusionrec.bench.a --record f"},
            {"bench": "b-y", "ours": 0.25, "commit": "c1", "date": "2026-12-06T00:00:00+00:00", "hardware": "cpu x2"}]  # fmt: skip
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    doc = "intro\n<!-- results: r bench=a- -->\nold text 0.99\n<!-- /results -->\nafter\n"
    out = _report.fill_blocks(doc, tmp_path)
    assert out.startswith(
        "intro\n<!-- results: r bench=a- -->\nGenerated from `docs/results/r.jsonl`, benches `a-*`"
    )
    assert (
        "| a-x | 0.5 |" in out
        and "b-y" not in out
        and "0.99" not in out
        and out.endswith("<!-- /results -->\nafter\n")
    )
    assert "Command: `python -m fusionrec.bench.a --record f`." in out
    assert _report.fill_blocks(out, tmp_path) == out  # idempotent
    with pytest.raises(ValueError, match="starting with 'c-'"):
        _report.fill_blocks("<!-- results: r bench=c- -->\n<!-- /results -->", tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        _report.fill_blocks("<!-- results: nope -->\n<!-- /results -->", tmp_path)
