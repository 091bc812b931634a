"""Algorithm 1: uniqueness at 10k items, determinism, equality with the one-at-a-time reference loop,
the escalation path (λ, then length, then the documented fallback), bad input, leak-free user IDs."""

from __future__ import annotations

import random
import time

import pytest
import torch
from fusionrec.trainer.idgen.generator import (
    IDGenConfig,
    assign_ids_sequential,
    generate_ids,
    generate_user_ids,
    normalize_id,
    user_texts,
)
from fusionrec.trainer.models import ModelConfig, build_seq2seq, train_tokenizer

BRANDS = ["acme", "lumina", "verde", "nordic", "sol", "aurora", "kiwi", "oak"]
KINDS = ["shampoo", "conditioner", "lotion", "serum", "cream", "gel", "mask", "toner"]
EXTRA = ["for dry skin", "for oily hair", "with vitamin c", "unscented", "travel size", ""]


def _synthetic_items(n: int, seed: int = 0) -> dict[str, str]:
    """Heavy title overlap: 8 brands x 8 kinds x 3 sizes x 6 extras = 1,152 distinct titles for n items."""
    rng = random.Random(seed)
    return {
        f"i{k:05d}": f"title: {rng.choice(BRANDS)} {rng.choice(KINDS)} {rng.choice([8, 16, 32])} oz "
        f"{rng.choice(EXTRA)}".strip()
        for k in range(n)
    }


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    rng = random.Random(1)
    words = BRANDS + KINDS + " ".join(EXTRA).split() + [f"w{k}x{k * 7 % 13}" for k in range(400)]
    corpus = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(3000)]
    return train_tokenizer(corpus, tmp_path_factory.mktemp("tok") / "t", vocab_size=600)


@pytest.fixture(scope="module")
def model(tok):
    model = build_seq2seq(
        ModelConfig("tiny-t5", d_model=32, d_ff=64, num_heads=2, seed=0), tokenizer=tok
    ).eval()
    # At the default init a random T5 emits nearly the same junk for every input (3 distinct first
    # candidates over 300 items); x4 weights make its junk input-dependent (~60), like a trained generator.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" not in name:
                p.mul_(4.0)
    return model


# Short windows keep the test fast; the schedule's structure (λ steps, then windows) is Algorithm 1's.
SMALL = dict(window=4, lambda_max=3.0, max_windows=2)


@pytest.mark.integration
def test_ten_thousand_items_all_unique(tok, model):
    texts = _synthetic_items(10_000)
    start = time.perf_counter()
    table = generate_ids(model, tok, texts, IDGenConfig(batch_size=1024, **SMALL))
    elapsed = time.perf_counter() - start
    ids = list(table.as_dict().values())
    assert len(table) == 10_000 and len(set(ids)) == 10_000
    assert all(i and i == normalize_id(i) for i in ids)  # words only, lowercase
    s = table.stats
    assert s["items"] == 10_000 and 0.0 <= s["longer_id_share"] <= s["second_attempt_share"] <= 1.0
    assert s["fallback"] < 10_000 * 0.5  # most IDs come from the generator, not from the fallback
    print(f"10k items in {elapsed:.1f}s: {s}")


@pytest.mark.unit
def test_deterministic_and_equal_to_sequential_reference(tok, model):
    texts = _synthetic_items(24, seed=3)
    titles = list(texts.values())[:4]
    texts |= {f"d{k:02d}": titles[k % 4] for k in range(48)}  # 13 copies of each: forces re-attempts
    cfg = IDGenConfig(batch_size=32, **SMALL)
    first = generate_ids(model, tok, texts, cfg)
    again = generate_ids(model, tok, texts, IDGenConfig(batch_size=7, **SMALL))
    assert first.as_dict() == again.as_dict() and first.hash == again.hash
    reference = assign_ids_sequential(model, tok, texts, cfg)
    assert reference.as_dict() == first.as_dict()
    assert first.stats["second_attempt_share"] > 0  # the overlap really caused collisions



@pytest.mark.unit
def test_reused_attempts_leave_the_reference_table(tok):
    """A random generator at its default init emits near-identical junk for every item, so λ = 2, 3, ...
    repeat λ = 1: those attempts are proven equal (stable penalty range) and skipped; the table is still
    exactly the one-item reference's, which runs every attempt."""
    junk = build_seq2seq(ModelConfig("tiny-t5", d_model=32, d_ff=64, num_heads=2, seed=0), tokenizer=tok).eval()
    texts = _synthetic_items(40, seed=5)
    cfg = IDGenConfig(batch_size=16, window=4, lambda_max=5.0, max_windows=2)
    ours = generate_ids(junk, tok, texts, cfg)
    reference = assign_ids_sequential(junk, tok, texts, cfg)
    assert ours.as_dict() == reference.as_dict()
    assert ours.stats["item_attempts_reused"] > 0
    assert ours.stats["item_attempts_generated"] < reference.stats["item_attempts_generated"]


@pytest.mark.unit
def test_identical_texts_escalate_lambda_then_length_then_fallback(tok, model):
    cfg = IDGenConfig(num_groups=3, window=4, lambda_max=2.0, max_windows=2, batch_size=8)
    texts = {f"dup{k:02d}": "title: acme shampoo 8 oz" for k in range(30)}
    table = generate_ids(model, tok, texts, cfg)
    assert len(set(table.as_dict().values())) == 30
    # Identical texts get identical candidates: every distinct usable candidate over the 4 attempts
    # (λ=1,2 in window [1,4), then λ=1,2 in window [4,8)) is taken by exactly one item, in order.
    cache = {}
    for a in range(cfg.max_attempts):
        from fusionrec.trainer.idgen.candidates import LocalGenerator

        cache[a] = LocalGenerator(model, tok, cfg, {"x": "title: acme shampoo 8 oz"}).run(a, ["x"])[0][0]
    distinct: list[str] = []
    for a in range(cfg.max_attempts):
        distinct += [c for c in cache[a] if c and c not in distinct]
    assert [table[f"dup{k:02d}"] for k in range(len(distinct))] == distinct[:30]
    s = table.stats
    assert s["fallback"] == max(0, 30 - len(distinct))
    n_first = len([c for c in dict.fromkeys(cache[0]) if c])
    assert s["second_attempt_share"] == pytest.approx((30 - n_first) / 30)
    window0 = len([c for c in dict.fromkeys(cache[0] + cache[1]) if c])
    assert s["longer_id_share"] == pytest.approx((30 - window0) / 30)
    assert 0 < s["second_attempt_share"] and 0 < s["longer_id_share"]  # both escalations happened
    assert assign_ids_sequential(model, tok, texts, cfg).as_dict() == table.as_dict()


@pytest.mark.unit
@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_empty_text_names_the_item(tok, model, bad):
    with pytest.raises(ValueError, match="item 'b'"):
        generate_ids(model, tok, {"a": "title: acme gel", "b": bad})


@pytest.mark.unit
def test_normalize_id():
    assert normalize_id("  Acme-Shampoo, 8oz!! ") == "acme shampoo 8oz"
    assert normalize_id("...") == ""


@pytest.mark.unit
def test_user_ids_never_see_valid_or_test_targets(tok, model):
    items = _synthetic_items(40, seed=5)
    seqs = {f"u{k}": [f"i{(k * 3 + j) % 40:05d}" for j in range(6)] for k in range(12)}
    src = user_texts(seqs, items)
    for user, seq in seqs.items():
        assert src[user] == "; ".join(items[i] for i in seq[:-2])
    cfg = IDGenConfig(batch_size=16, **SMALL)
    before = generate_user_ids(model, tok, seqs, items, cfg)
    # Change the text of every valid/test target that is not also a training item of someone: the
    # user IDs must not move. (Targets reaching the generator would change its input and its output.)
    train_items = {i for s in seqs.values() for i in s[:-2]}
    targets = {i for s in seqs.values() for i in s[-2:]} - train_items
    assert targets
    poisoned = dict(items) | {i: f"title: leaked target {i}" for i in targets}
    assert user_texts(seqs, poisoned) == src
    after = generate_user_ids(model, tok, seqs, poisoned, cfg)
    assert after.as_dict() == before.as_dict()
    with pytest.raises(ValueError, match="user 'short'"):
        user_texts({"short": ["i00001", "i00002"]}, items)


@pytest.mark.unit
def test_config_validation():
    with pytest.raises(ValueError, match="lambda"):
        IDGenConfig(lambda_start=0)
    with pytest.raises(ValueError, match="window"):
        IDGenConfig(window=1)
    cfg = IDGenConfig()
    assert cfg.max_attempts == 30 and cfg.attempt(0) == (0, 1.0) and cfg.attempt(9) == (0, 10.0)
    assert cfg.attempt(10) == (1, 1.0)
    b = cfg.beam_config(10)
    assert (b.min_new_tokens, b.max_new_tokens, b.diversity_penalty) == (10, 19, 1.0)
    assert (cfg.beam_config(0).min_new_tokens, cfg.beam_config(0).max_new_tokens) == (1, 9)
