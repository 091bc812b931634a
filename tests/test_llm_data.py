"""Ranking prompts: DMPO-format files (and their bad inputs), truncation, prompts from our corpora, PALR tasks."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pytest
from fusionrec.data_pipeline.errors import DataError
from fusionrec.trainer.llm.batches import EpochBatches
from fusionrec.trainer.models.causal_lm import CausalLMConfig, load_tokenizer
from fusionrec.trainer.recipes.dmpo.data import (
    CorpusPromptConfig,
    RankingPrompt,
    TruncationStats,
    answer,
    build_corpus_preferences,
    fit_prompt,
    group_records,
    load_dmpo_file,
    render_item,
)
from fusionrec.trainer.recipes.palr.data import PALRTaskConfig, palr_example

HIST = [render_item(t) for t in ("Alien", "Heat", "Up")]
A, B, C = render_item("Brazil"), render_item("Jaws"), render_item("Ran")


def _rec(cands=(A, B), out=None, hist=HIST):
    prompt = RankingPrompt(list(hist), cands).render()
    return {
        "instruction": prompt,
        "input": "",
        "output": out if out is not None else [answer(A, B), answer(B, A)],
    }


def _write(tmp_path, records, name="rec_x_dpo_ranking_1.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


@pytest.mark.unit
def test_template_round_trip_and_answer_format():
    text = RankingPrompt(HIST, (A, B)).render()
    assert text == (
        "You are an assistant working on movie recommendations. Here is the user's history of movies they have "
        "watched:  <Title:Alien>  <Title:Heat>  <Title:Up> . Rank the likelihood of the user watching the two "
        "movies  <Title:Brazil>  and  <Title:Jaws> ."
    )
    assert answer(A, B) == " <Title:Brazil> ,  <Title:Jaws> "


@pytest.mark.unit
def test_bad_records_name_file_and_record(tmp_path):
    path = _write(tmp_path, [_rec(), _rec(out=[answer(A, B)])])
    with pytest.raises(DataError, match=r"rec_x_dpo_ranking_1.json: record 1: output has no negative"):
        load_dmpo_file(path)
    path = _write(tmp_path, [_rec(cands=(A, A), out=[answer(A, A), answer(A, A)])])
    with pytest.raises(DataError, match=r"record 0: positive equals the negative"):
        load_dmpo_file(path)
    path = _write(tmp_path, [_rec(), _rec(out=[answer(A, B), answer(A, B)])])
    with pytest.raises(DataError, match=r"record 1: preferred and dispreferred answers are identical"):
        load_dmpo_file(path)
    path = _write(tmp_path, [_rec(out=[answer(A, C), answer(C, A)])])
    with pytest.raises(DataError, match=r"record 0: preferred answer .* is not an ordering"):
        load_dmpo_file(path)
    path = _write(tmp_path, [{"instruction": "Tell me a joke", "output": "no"}])
    with pytest.raises(DataError, match="record 0: instruction does not follow the DMPO template"):
        load_dmpo_file(path)
    path = tmp_path / "broken.json"
    path.write_text('[{"instruction": ')
    with pytest.raises(DataError, match="broken.json:1: invalid JSON"):
        load_dmpo_file(path)


@pytest.mark.unit
def test_grouping_checks_users_positives_and_k(tmp_path):
    rows = [_rec(), _rec(cands=(C, A), out=[answer(A, C), answer(C, A)])]
    recs = load_dmpo_file(_write(tmp_path, rows))
    (group,) = group_records(recs, 2)
    assert group.k == 2 and [r.negative for r in group.rows] == [B, C] and recs[1].positive == A
    with pytest.raises(DataError, match="not a multiple of k=3"):
        group_records(recs, 3)
    other_user = load_dmpo_file(_write(tmp_path, [_rec(), _rec(hist=HIST[:1])]))
    with pytest.raises(DataError, match="mixes users/positives"):
        group_records(other_user, 2)
    # a positive that is another row's negative: B is positive in row 1, negative in row 0
    clash = load_dmpo_file(_write(tmp_path, [_rec(), _rec(out=[answer(B, A), answer(A, B)])]))
    with pytest.raises(DataError, match="mixes users/positives"):
        group_records(clash, 2)
    sft = load_dmpo_file(_write(tmp_path, [_rec(out=answer(A, B))]))
    with pytest.raises(DataError, match="no negative"):
        group_records(sft, 1)


@pytest.mark.unit
def test_truncation_drops_oldest_history_never_candidates():
    tok = load_tokenizer(CausalLMConfig())  # byte-level: 1 token per byte (+ BOS? none)
    hist = [render_item(f"Film number {i}") for i in range(10)]
    prompt = RankingPrompt(hist, (A, B))
    full = len(tok(prompt.render())["input_ids"])
    item_len = len(hist[0])  # each item is the same number of bytes/tokens
    stats = TruncationStats()
    text = fit_prompt(
        tok, prompt, answer_tokens=10, max_length=full + 10 - 2 * item_len, stats=stats, where="r0"
    )
    assert text == prompt.render(drop_oldest=2) and hist[2] in text and hist[1] not in text
    assert A in text and B in text
    assert stats.as_dict() == {"prompts": 1, "truncated": 1, "items_dropped": 2}
    assert fit_prompt(tok, prompt, 10, full + 10, stats, "r1") == prompt.render()
    assert stats.as_dict() == {"prompts": 2, "truncated": 1, "items_dropped": 2}
    with pytest.raises(ValueError, match="r2: the candidates and instruction alone exceed max_length=100"):
        fit_prompt(tok, prompt, 10, 100, stats, "r2")


def _interactions(rows):
    users, items, ts, ratings = zip(*rows, strict=True)
    return pa.table(
        {
            "user_id": pa.array(users, pa.string()),
            "item_id": pa.array(items, pa.string()),
            "timestamp": pa.array(ts, pa.int64()),
            "rating": pa.array(ratings, pa.float32()),
        }
    )


@pytest.mark.unit
def test_corpus_preferences_rating_split_and_counted_skips():
    titles = {f"i{j}": f"Item {j}" for j in range(10)} | {"dup": "Item 0"}
    rows = [("u1", "i0", 1, 5.0), ("u1", "i1", 2, 3.0), ("u1", "i2", 3, 4.0), ("u1", "i3", 4, 1.0)]
    rows += [("u1", "i4", 5, 2.0), ("u1", "i5", 6, 3.0), ("u1", "i6", 7, 4.0)]  # 3 pos (>3), 4 neg (<=3)
    rows += [("u2", "i0", 1, 5.0), ("u2", "i1", 2, 5.0), ("u2", "i2", 3, 1.0)]  # 1 negative only
    rows += [("u3", "i0", 1, None), ("u3", "zz", 2, 5.0)]  # no rating, no title: no usable row left
    rows += [("u4", "i0", 1, 5.0), ("u4", "i1", 2, 1.0), ("u4", "i2", 3, 1.0), ("u4", "i3", 4, 1.0)]
    cfg = CorpusPromptConfig(k=3, min_positives=2, min_negatives=3, eval_fraction=0.0)
    out = build_corpus_preferences(_interactions(rows), titles, cfg)
    assert out.skipped == {
        "no_rating": 1,
        "no_title": 1,
        "too_few_positives": 1,  # u4
        "too_few_negatives": 1,  # u2
        "same_title": 0,
    }
    (group,) = out.groups
    assert group.k == 3
    assert {r.positive for r in group.rows} == {render_item("Item 6")}  # the latest positive
    negatives = {r.negative for r in group.rows}
    assert negatives <= {render_item(f"Item {j}") for j in (1, 3, 4, 5)}  # rating 3 counts as negative
    history = group.rows[0].prompt.history
    assert render_item("Item 6") not in history and not negatives & set(history)
    assert history == [
        render_item(f"Item {j}") for j in range(6) if render_item(f"Item {j}") not in negatives
    ]


@pytest.mark.unit
def test_corpus_candidate_order_is_randomised():
    titles = {f"i{j}": f"Item {j}" for j in range(6)}
    rows = []
    for u in range(40):
        rows += [(f"u{u}", f"i{j}", j, 5.0 if j < 3 else 2.0) for j in range(6)]
    out = build_corpus_preferences(_interactions(rows), titles, CorpusPromptConfig(k=1, min_negatives=1))
    firsts = [g.rows[0].prompt.candidates[0] == g.rows[0].positive for g in out.groups]
    assert 0 < sum(firsts) < len(firsts)  # both orders occur
    assert len(out.eval_records) == 8 and len(out.groups) == 32  # 20% of 40 users held out


@pytest.mark.unit
def test_palr_tasks_history_cap_candidates_and_swaps():
    cfg = PALRTaskConfig(max_history=20, n_targets=2, swap_prob=0.0)
    hist = [f"item{i}" for i in range(30)]
    prompt, ans = palr_example(hist, ["t1", "t2"], ["c1", "t1", "c2"], cfg, random.Random(0))
    assert '"item9"' not in prompt and '"item10"' in prompt and '"item29"' in prompt  # last 20 kept
    assert "from the candidate list" in prompt and '"t2"' in prompt.split("The candidates are")[1]
    assert ans == ' "t1", "t2"'
    rec_prompt, _ = palr_example(hist, ["t1"], None, cfg, random.Random(0))
    assert "candidate" not in rec_prompt and rec_prompt.startswith("### Instruction: Recommend 2 other items")
    swapped = PALRTaskConfig(n_targets=2, swap_prob=1.0)
    p, a = palr_example(["h1", "h2"], ["t1", "t2"], None, swapped, random.Random(0))
    assert sorted(a.replace('"', "").replace(",", "").split()) != ["t1", "t2"]  # items moved between the two
    assert sorted(p.count(f'"{x}"') + a.count(f'"{x}"') for x in ("h1", "h2", "t1", "t2")) == [1, 1, 1, 1]


@pytest.mark.unit
def test_epoch_batches_equal_per_rank_and_resumable():
    data = list(range(11))
    ranks = [EpochBatches(data, list, batch_size=2, rank=r, world=2, seed=3) for r in range(2)]
    first = [list(r) for r in ranks]
    assert [len(f) for f in first] == [2, 2] and ranks[0].dropped_per_epoch == 3
    seen = [x for f in first for b in f for x in b]
    assert len(set(seen)) == 8
    again = EpochBatches(data, list, 2, 0, 2, seed=3)
    again.load_state_dict(ranks[0].state_dict())
    assert list(again) == list(ranks[0])  # epoch 1 order reproduced after restoring the state


@pytest.mark.slow
def test_all_shared_dmpo_files_load_and_round_trip(shared_data):
    d = shared_data / "dmpo"
    for domain in ("Amazon_Movie", "data_ml_1m"):
        assert len(load_dmpo_file(d / f"rec_{domain}_sft_ranking.json")) == 100
        assert len(load_dmpo_file(d / f"rec_{domain}_eval_ranking.json")) == 1000
        for k in (2, 3, 4, 5):
            assert len(group_records(load_dmpo_file(d / f"rec_{domain}_dpo_ranking_{k}.json"), k)) == 100
