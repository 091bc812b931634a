"""A trained tokenizer must be reproducible: resume and export rebuild it from the same text."""

from __future__ import annotations

import json

import pytest
from fusionrec.trainer.models.tokenizer import load_tokenizer, train_tokenizer

pytestmark = pytest.mark.unit


def test_training_twice_gives_identical_tokenizer(tmp_path):
    corpus = [f"item {i} brand{i % 37} product line {i % 91} lovely shampoo {i % 13}" for i in range(2000)]
    a = train_tokenizer(corpus, tmp_path / "a", vocab_size=400)
    b = train_tokenizer(corpus, tmp_path / "b", vocab_size=400)
    assert json.dumps(a.get_vocab(), sort_keys=True) == json.dumps(b.get_vocab(), sort_keys=True)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()
    text = "lovely shampoo brand7 product line 12"
    ids = a(text)["input_ids"]
    assert ids == b(text)["input_ids"] and ids[-1] == a.eos_token_id == 1
    assert [a.pad_token_id, a.eos_token_id, a.unk_token_id] == [0, 1, 2]
    assert load_tokenizer(tmp_path / "a")(text)["input_ids"] == ids
