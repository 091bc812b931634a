"""IDTable: validation, versioned atomic save/load, reverse lookup, baseline schemes, tokenised IDs."""

from __future__ import annotations

import json

import pytest
from fusionrec.trainer.idgen.id_table import IDTable
from fusionrec.trainer.models.tokenizer import train_tokenizer

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    corpus = ["red soft cream for dry skin", "blue hair shampoo 8 oz", "green tea lotion"] * 30
    return train_tokenizer(corpus, tmp_path_factory.mktemp("tok") / "t", vocab_size=80)


def test_duplicate_textual_id_names_both_items():
    with pytest.raises(ValueError, match=r"'red cream'.*'a'.*'c'"):
        IDTable({"a": "red cream", "b": "blue", "c": "red cream"}, "generative")


def test_empty_id_and_bad_scheme_rejected():
    with pytest.raises(ValueError, match="item 'b'"):
        IDTable({"a": "x", "b": "  "}, "generative")
    with pytest.raises(ValueError, match="scheme"):
        IDTable({"a": "x"}, "semantic")


def test_lookup_both_ways_and_version():
    t = IDTable({"a": "red cream", "b": "blue shampoo"}, "generative", round=3)
    assert t["a"] == "red cream" and t.lookup("blue shampoo") == "b" and t.get_item("nope") is None
    assert t.version.startswith("r3-") and len(t.hash) == 64
    # The hash names the mapping, not the insertion order; a changed ID changes it.
    assert IDTable({"b": "blue shampoo", "a": "red cream"}, "generative", 3).hash == t.hash
    assert IDTable({"a": "red cream", "b": "blue"}, "generative", 3).hash != t.hash
    with pytest.raises(KeyError, match="'zzz'"):
        t.lookup("zzz")


def test_save_load_roundtrip_atomic(tmp_path):
    t = IDTable({"a": "red cream", "b": "blue shampoo"}, "generative", round=2, stats={"fallback": 0})
    path = t.save(tmp_path / "ids.json")
    assert [p.name for p in tmp_path.iterdir()] == ["ids.json"]  # no temp file left behind
    back = IDTable.load(path)
    assert back.as_dict() == t.as_dict() and back.version == t.version and back.stats == {"fallback": 0}


def test_load_rejects_tampering_and_duplicates(tmp_path):
    path = IDTable({"a": "red cream", "b": "blue"}, "generative").save(tmp_path / "ids.json")
    doc = json.loads(path.read_text())
    doc["ids"]["b"] = "green"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="hash"):
        IDTable.load(path)
    doc["ids"]["b"] = "red cream"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"ids\.json.*duplicate textual ID 'red cream'.*'a'.*'b'"):
        IDTable.load(path)
    text = path.read_text().replace('"b": "red cream"', '"a": "blue"')
    path.write_text(text)
    with pytest.raises(ValueError, match="key 'a' appears twice"):
        IDTable.load(path)


def test_sequential_numbers_by_first_appearance_training_parts_first():
    seqs = {"u1": ["x", "y", "z", "w"], "u2": ["y", "v", "q", "x"]}
    # Training parts: u1 -> x, y ; u2 -> y, v. Then holdout parts: u1 -> z, w ; u2 -> q, x.
    t = IDTable.sequential(seqs)
    assert t.as_dict() == {"x": "1001", "y": "1002", "v": "1003", "z": "1004", "w": "1005", "q": "1006"}
    assert t.scheme == "sequential"


def test_random_numeric_is_seeded_permutation():
    items = [f"i{k}" for k in range(50)]
    a, b = IDTable.random_numeric(items, seed=7), IDTable.random_numeric(reversed(items), seed=7)
    assert a.as_dict() == b.as_dict()
    assert sorted(a.as_dict().values()) == sorted(str(1001 + k) for k in range(50))
    assert IDTable.random_numeric(items, seed=8).as_dict() != a.as_dict()


def test_tokenized_ids_for_the_trie(tok):
    t = IDTable({"a": "red cream", "b": "blue shampoo"}, "generative")
    toks = t.tokenized(tok)
    assert toks["a"] == tok("red cream")["input_ids"] and toks["a"][-1] == tok.eos_token_id
    assert tok.decode(toks["b"], skip_special_tokens=True) == "blue shampoo"


def test_tokenized_refuses_unknown_tokens_naming_item(tok):
    t = IDTable({"a": "red cream", "b": "red 漢字"}, "generative")
    with pytest.raises(ValueError, match="item 'b'.*cannot encode"):
        t.tokenized(tok)


def test_length_stats_hand_computed(tok):
    t = IDTable({"a": "red cream", "b": "blue", "c": "green tea lotion"}, "generative")
    s = t.length_stats()
    assert s == {"mean_words": 2.0, "max_words": 3}
    s = t.length_stats(tok)
    lens = [
        len(tok(x, add_special_tokens=False)["input_ids"]) for x in ("red cream", "blue", "green tea lotion")
    ]
    assert s["mean_tokens"] == pytest.approx(sum(lens) / 3) and s["max_tokens"] == max(lens)


def test_method_and_with_stats_keep_the_version():
    title = IDTable({"a": "red cream", "b": "blue"}, "generative", 0, {"initial": "title", "suffixed": 0})
    generated = IDTable({"a": "red cream", "b": "blue"}, "generative", 1, {"second_attempt_share": 0.5})
    assert title.method == "title" and generated.method == "generator"
    assert IDTable.random_numeric(["a", "b"]).method == "random"
    more = title.with_stats(quality={"items": 2})
    assert more.version == title.version and more.as_dict() == title.as_dict() and more.method == "title"
    assert more.stats == {"initial": "title", "suffixed": 0, "quality": {"items": 2}}
    assert title.stats == {"initial": "title", "suffixed": 0}  # the original is untouched


def test_quality_by_hand(tok):
    """Words of the item's own text, bases without number suffixes, lengths in words and tokens, attempts."""
    t = IDTable(
        {"a": "red cream", "b": "red cream 2", "c": "xq", "d": "tttt"},
        "generative",
        stats={"second_attempt_share": 0.25, "fallback": 1},
    )
    texts = {"a": "title: red soft cream", "b": "title: red cream", "c": "title: green tea", "d": "blue hair"}
    q = t.quality(texts, tok)
    # ID words: red cream | red cream 2 | xq | tttt -> 4 of 7 in their own text; items a only fully.
    assert q["word_in_text_share"] == pytest.approx(4 / 7)
    assert q["items_all_words_in_text_share"] == pytest.approx(1 / 4)
    assert q["distinct_id_share"] == 1.0 and q["duplicate_base_share"] == pytest.approx(1 / 4)
    assert q["short_id_share"] == pytest.approx(1 / 4)  # "xq": under 3 letters
    assert q["mean_words"] == pytest.approx(7 / 4)
    lens = [len(tok(x, add_special_tokens=False)["input_ids"]) for x in t.as_dict().values()]
    assert q["mean_tokens"] == pytest.approx(sum(lens) / 4)
    assert q["second_attempt_share"] == 0.25 and q["fallback_share"] == pytest.approx(1 / 4)
    assert "word_in_text_share" not in t.quality()  # no texts: no word-in-text shares
