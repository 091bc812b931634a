"""Model builders and tokenizers: T5 special-token layout, atomic save/load, seeded tiny models, real assets."""

from __future__ import annotations

import pytest
import torch
from fusionrec.trainer.models import (
    ModelConfig,
    TokenizerConfig,
    build_seq2seq,
    build_tokenizer,
    encode_strict,
    load_tokenizer,
    train_tokenizer,
)

CORPUS = ["title: acme shampoo 8 oz; price: 5", "title: verde soft cream for dry skin"] * 40


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(CORPUS, tmp_path_factory.mktemp("tok") / "t", vocab_size=120)


@pytest.mark.unit
def test_trained_tokenizer_has_t5_layout_and_roundtrips(tok, tmp_path):
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    ids = tok("acme shampoo")["input_ids"]
    assert ids[-1] == 1 and tok.decode(ids, skip_special_tokens=True) == "acme shampoo"
    out = tmp_path / "saved"
    again = train_tokenizer(CORPUS, out, vocab_size=120)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]  # no temp folder left behind
    assert load_tokenizer(out)("acme shampoo")["input_ids"] == again("acme shampoo")["input_ids"] == ids


@pytest.mark.unit
def test_tokenizer_config_and_errors(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        TokenizerConfig(path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="corpus"):
        build_tokenizer(TokenizerConfig())
    assert len(build_tokenizer(TokenizerConfig(vocab_size=100), CORPUS)) <= 100


@pytest.mark.unit
def test_encode_strict_names_what_fails(tok):
    assert encode_strict(tok, "acme", "item 'a'")[-1] == tok.eos_token_id
    with pytest.raises(ValueError, match="item 'b'.*cannot encode"):
        encode_strict(tok, "acme 漢", "item 'b'")


@pytest.mark.unit
@pytest.mark.parametrize("name", ["tiny-t5", "tiny-bart"])
def test_tiny_models_are_seeded_and_sized(tok, name):
    state = torch.random.get_rng_state()
    a = build_seq2seq(ModelConfig(name, seed=5), tokenizer=tok)
    assert torch.equal(torch.random.get_rng_state(), state)  # building does not disturb the caller's RNG
    b = build_seq2seq(ModelConfig(name, seed=5), tokenizer=tok)
    c = build_seq2seq(ModelConfig(name, seed=6), tokenizer=tok)
    pa, pb, pc = (dict(m.named_parameters()) for m in (a, b, c))
    assert all(torch.equal(pa[k], pb[k]) for k in pa) and not all(torch.equal(pa[k], pc[k]) for k in pa)
    assert a.config.d_model == 128 and a.get_input_embeddings().num_embeddings == len(tok)
    assert a.config.pad_token_id == 0 and a.config.eos_token_id == 1
    start = 0 if name == "tiny-t5" else 1  # T5 starts from <pad>, BART from </s>
    assert a.config.decoder_start_token_id == start
    out = a(input_ids=torch.tensor([[5, 6, 1]]), labels=torch.tensor([[7, 1]]))
    assert out.logits.shape == (1, 2, len(tok)) and torch.isfinite(out.loss)


@pytest.mark.unit
def test_load_from_local_folder_and_resize(tok, tmp_path):
    model = build_seq2seq(ModelConfig("tiny-t5", d_model=32, d_ff=64, num_heads=2), tokenizer=tok)
    model.save_pretrained(tmp_path / "m")
    loaded = build_seq2seq(ModelConfig(str(tmp_path / "m")))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), loaded.parameters(), strict=True))
    bigger = build_seq2seq(ModelConfig(str(tmp_path / "m")), vocab_size=len(tok) + 10)
    assert bigger.get_input_embeddings().num_embeddings == len(tok) + 10


@pytest.mark.unit
def test_model_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=100, num_heads=3)
    with pytest.raises(ValueError, match="num_layers"):
        ModelConfig(num_layers=0)
    with pytest.raises(ValueError, match="vocab_size"):
        build_seq2seq(ModelConfig())


@pytest.mark.slow
def test_real_t5_tokenizer_with_tiny_t5(t5_tokenizer_dir):
    real = load_tokenizer(t5_tokenizer_dir)
    assert (real.pad_token_id, real.eos_token_id, real.unk_token_id) == (0, 1, 2)
    assert real("hello world")["input_ids"] == [21820, 296, 1]  # the known t5-small ids
    model = build_seq2seq(ModelConfig("tiny-t5", d_model=64, d_ff=128, num_heads=2), tokenizer=real)
    assert model.get_input_embeddings().num_embeddings == len(real)
