"""Vocabulary reduction (trainer/models/tokenizer.py `reduce_vocab`) on the real T5 SentencePiece tokenizer
and real Amazon Beauty item texts: a loadable tokenizer folder, contiguous ids, T5's special-token layout,
and every text tokenized to exactly the pieces of the full tokenizer (ids remapped); deterministic.
"""

from __future__ import annotations

import pytest
from fusionrec.trainer.models.tokenizer import load_tokenizer, reduce_vocab, train_tokenizer
from fusionrec.trainer.prompts import STYLES, build_prompt


def _beauty_texts(shared_data, n: int) -> list[str]:
    lines = (shared_data / "amazon_beauty" / "item_plain_text.txt").read_text(encoding="utf-8").splitlines()
    return [line.partition(" ")[2] for line in lines[:n]]


@pytest.mark.slow
def test_reduced_t5_tokenizer_segments_like_the_full_one(shared_data, t5_tokenizer_dir, tmp_path):
    texts = _beauty_texts(shared_data, 3000)
    prompts = [build_prompt(["0 1"], t, style=s).text for s, ts in STYLES.items() for t in range(len(ts))]
    corpus = texts + prompts
    tok, report = reduce_vocab(t5_tokenizer_dir, corpus, tmp_path / "a")
    full = load_tokenizer(t5_tokenizer_dir)
    assert report.full_size == len(full) == 32100 and report.mismatches == 0
    assert report.texts_checked == len(corpus) and 1000 < len(tok) == report.reduced_size < 10000
    assert sorted(tok.get_vocab().values()) == list(range(len(tok)))  # contiguous ids
    assert [tok.pad_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2]
    # Reloaded from the folder (AutoTokenizer): identical pieces, eos appended, decode round-trips.
    tok = load_tokenizer(tmp_path / "a")
    for text in corpus[::7]:
        ids, ref = tok(text)["input_ids"], full(text)["input_ids"]
        assert tok.convert_ids_to_tokens(ids) == full.convert_ids_to_tokens(ref)
        assert ids[-1] == 1 and max(ids) < len(tok)
        assert tok.decode(ids, skip_special_tokens=True) == full.decode(ref, skip_special_tokens=True)
    # Exactly the special tokens (T5: pad, eos, unk + 100 sentinels) and the pieces the corpus uses
    # (characters T5 lacks, e.g. "~", tokenize to <unk> in both).
    pieces = {p for text in corpus for p in full.tokenize(text)}
    used = {p for p in pieces if full.convert_tokens_to_ids(p) != full.unk_token_id}
    assert len(pieces - used) < 5
    chars = {p for p in full.get_vocab() if len(p.removeprefix("▁")) == 1}  # fallbacks for unseen text
    assert set(tok.get_vocab()) == used | chars | set(full.all_special_tokens)
    # Deterministic: the same texts (in another order) give a byte-identical tokenizer.json.
    reduce_vocab(t5_tokenizer_dir, corpus[::-1], tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()


@pytest.mark.unit
def test_a_bpe_source_is_refused_naming_the_file(tmp_path):
    train_tokenizer(["red lipstick", "blue shampoo"] * 50, tmp_path / "bpe", vocab_size=60)
    with pytest.raises(ValueError, match="bpe/tokenizer.json: vocabulary reduction needs a Unigram"):
        reduce_vocab(tmp_path / "bpe", ["red lipstick"], tmp_path / "out")


@pytest.mark.slow
def test_recipe_vocab_texts_keep_the_title_table_and_prompts_identical(t5_tokenizer_dir, tmp_path):
    """The idgenrec module reduces over item texts + every template + title IDs + digits: the initial ID
    table chosen with the reduced tokenizer is the one chosen with the full tokenizer, token for token."""
    from fusionrec.trainer.recipes.idgenrec.data import encodable_fn, id_tokens, title_table
    from fusionrec.trainer.recipes.idgenrec.module import IDGenRecModule
    from test_idgenrec import make_corpus, tiny_config

    corpus = make_corpus(tmp_path / "corpus")
    cfg = tiny_config(str(corpus), pretrained_tokenizer=str(t5_tokenizer_dir), reduce_vocab=True)
    module = IDGenRecModule(cfg, tmp_path / "run")
    full = load_tokenizer(t5_tokenizer_dir)
    tok, report = reduce_vocab(t5_tokenizer_dir, module._vocab_texts(full), tmp_path / "reduced")
    assert report.reduced_size < 1000 and report.mismatches == 0
    a = title_table(module.titles, cfg.title_words, encodable_fn(full))
    b = title_table(module.titles, cfg.title_words, encodable_fn(tok))
    assert a.as_dict() == b.as_dict()
    ta, tb = id_tokens(a, full), id_tokens(b, tok)
    assert all(full.convert_ids_to_tokens(ta[i]) == tok.convert_ids_to_tokens(tb[i]) for i in ta)
    # Text outside the corpus (a generated ID with a new number) still encodes without <unk> and decodes
    # back, in pieces of its own (not necessarily the full tokenizer's: "12" may become "1" "2").
    ids = tok("item 1207", add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids and tok.decode(ids) == "item 1207"


@pytest.mark.slow
def test_recipe_vocab_texts_keep_the_collab_table_identical(t5_tokenizer_dir, tmp_path):
    """initial_ids = "collab": the table is built from the training split only and chosen identically with
    the full and the reduced tokenizer (its words are among the vocabulary texts)."""
    from fusionrec.trainer.idgen.collab_ids import collab_table
    from fusionrec.trainer.recipes.idgenrec.data import all_samples, encodable_fn, id_tokens
    from fusionrec.trainer.recipes.idgenrec.module import IDGenRecModule
    from test_idgenrec import make_corpus, tiny_config

    corpus = make_corpus(tmp_path / "corpus")
    cfg = tiny_config(str(corpus), pretrained_tokenizer=str(t5_tokenizer_dir), reduce_vocab=True,
                      initial_ids="collab", collab_branching=4)  # fmt: skip
    module = IDGenRecModule(cfg, tmp_path / "run")
    full = load_tokenizer(t5_tokenizer_dir)
    tok, report = reduce_vocab(t5_tokenizer_dir, module._vocab_texts(full), tmp_path / "reduced")
    assert report.mismatches == 0
    a, b = module.collab_table(full), module.collab_table(tok)
    assert a.as_dict() == b.as_dict() and a.stats["initial"] == "collab" and len(a) == 36
    ta, tb = id_tokens(a, full), id_tokens(b, tok)
    assert all(full.convert_ids_to_tokens(ta[i]) == tok.convert_ids_to_tokens(tb[i]) for i in ta)
    train = list(all_samples(corpus, splits=["train"]))
    assert {s["split"] for s in train} == {"train"} and len(train) == 168
    assert collab_table(train, module.titles, encodable_fn(full), 4, cfg.collab_dim).hash == a.hash
