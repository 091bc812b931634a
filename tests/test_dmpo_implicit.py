"""Many-shot DMPO preference sets from purchase sequences: the split, the positives, nested negatives, files."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fusionrec.trainer.recipes.dmpo.data import group_records, load_dmpo_file, render_item
from fusionrec.trainer.recipes.dmpo.implicit import (
    ImplicitPromptConfig,
    build_implicit_preferences,
    write_dmpo_files,
)

pytestmark = pytest.mark.unit

ITEMS = [f"i{n}" for n in range(40)]
TITLES = {i: f"Title {i}" for i in ITEMS} | {"i39": ""}  # i39 has no title


def _sequences() -> dict[str, list[str]]:
    seqs = {f"u{u}": [f"i{(u * 3 + j) % 38}" for j in range(4 + u % 3)] for u in range(12)}
    seqs["short"] = ["i1", "i2", "i3"]  # too short: needs history + positive + valid + test
    seqs["notitle"] = ["i1", "i2", "i39", "i4", "i5"]  # training positive items[-3] = i39 has no title
    return seqs


def _user(record) -> str:
    return record.source.split()[1]


def test_split_positives_histories_and_negatives() -> None:
    seqs = _sequences()
    cfg = ImplicitPromptConfig(k=3, max_history=2, eval_users=4, seed=1)
    prefs = build_implicit_preferences(seqs, TITLES, cfg)
    eval_users = {_user(r) for r in prefs.eval_records}
    train_users = {_user(g.rows[0]) for g in prefs.groups}
    assert len(eval_users) == 4 and not eval_users & train_users  # held-out users are never trained on
    assert prefs.skipped["too_short"] == 1 and "short" not in eval_users | train_users
    skipped_notitle = prefs.skipped["positive_no_title"]
    assert len(train_users) + len(eval_users) + skipped_notitle == 13 and skipped_notitle in (0, 1)
    for r in prefs.eval_records:  # held out: the test item against the history before it
        seq = seqs[_user(r)]
        assert r.positive == render_item(TITLES[seq[-1]])
        assert r.prompt.history == [render_item(TITLES[i]) for i in seq[:-1] if TITLES[i]][-2:]
    for g in prefs.groups:  # training: the last item of the training part; valid/test items never appear
        seq = seqs[_user(g.rows[0])]
        assert g.k == 3 and {r.positive for r in g.rows} == {render_item(TITLES[seq[-3]])}
        assert g.rows[0].prompt.history == [render_item(TITLES[i]) for i in seq[:-3] if TITLES[i]][-2:]
        negatives = {r.negative for r in g.rows}
        assert len(negatives) == 3 and not negatives & {render_item(TITLES[i]) for i in seq}
        assert all(r.prompt.words["noun"] == "products" for r in g.rows)


def test_files_reload_and_negatives_nest_across_k(tmp_path) -> None:
    prefs = build_implicit_preferences(_sequences(), TITLES, ImplicitPromptConfig(k=3, eval_users=3))
    manifest = write_dmpo_files(prefs, tmp_path, "toy", [1, 3], {"note": "test"})
    assert manifest["groups"] == len(prefs.groups) and manifest["eval_pairs"] == 3
    one = load_dmpo_file(tmp_path / "rec_toy_dpo_ranking_1.json")
    three = group_records(load_dmpo_file(tmp_path / "rec_toy_dpo_ranking_3.json"), 3)
    assert [r.negative for r in one] == [g.rows[0].negative for g in three]  # k=1 = the first of the k=3
    sft = load_dmpo_file(tmp_path / "rec_toy_sft_ranking.json")
    assert [r.chosen for r in sft] == [g.rows[0].chosen for g in three] and sft[0].rejected is None
    assert len(load_dmpo_file(tmp_path / "rec_toy_eval_ranking.json")) == 3
    assert not list(tmp_path.glob(".*"))  # no temp file left behind
    with pytest.raises(ValueError, match="ks=\\[4\\]"):
        write_dmpo_files(prefs, tmp_path, "toy", [4], {})


def test_cli_builds_files_from_a_prepared_dataset(tmp_path) -> None:
    from fusionrec.launch.cli import main

    ds = tmp_path / "processed" / "toy"
    ds.mkdir(parents=True)
    seqs = _sequences()
    pq.write_table(
        pa.table({"user_id": list(seqs), "item_ids": list(seqs.values())}), ds / "sequences.parquet"
    )
    pq.write_table(pa.table({"item_id": list(TITLES), "title": list(TITLES.values())}), ds / "items.parquet")
    assert main(["dmpo-data", "--data", str(ds), "--out", str(tmp_path / "out"), "--k", "1", "2",
                 "--eval-users", "2"]) == 0  # fmt: skip
    manifest = json.loads((tmp_path / "out" / "rec_toy_manifest.json").read_text())
    assert manifest["eval_pairs"] == 2 and manifest["ks"] == [1, 2] and manifest["skipped"]["too_short"] == 1
    assert main(["dmpo-data", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")]) == 2


def test_titles_can_be_cut_to_their_first_words() -> None:
    titles = {i: f"Brand {i} long descriptive words here" for i in ITEMS}
    prefs = build_implicit_preferences(
        _sequences(), titles, ImplicitPromptConfig(k=1, eval_users=2, title_words=2)
    )
    assert all(
        c.startswith(" <Title:Brand i") and c.count(" ") == 3
        for r in prefs.eval_records
        for c in r.prompt.candidates
    )
