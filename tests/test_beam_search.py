"""Vectorised constrained beam search == HF generate + prefix_allowed_tokens_fn (T5 and BART)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from fusionrec.trainer.decoding import CompiledTrie, StepTimings, constrained_beam_search
from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

VOCAB = 300
NUM_ITEMS = 1200


def _random_sequences(n: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, ...]] = set()
    out: list[list[int]] = []
    while len(out) < n:
        seq = tuple(int(t) for t in rng.integers(3, VOCAB, int(rng.integers(1, 6))))
        if seq not in seen:
            seen.add(seq)
            out.append(list(seq))
    return out


def _t5():
    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=VOCAB, d_model=64, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=16,
        decoder_start_token_id=0,
    )  # fmt: skip
    return T5ForConditionalGeneration(cfg).eval()


def _bart():
    torch.manual_seed(0)
    cfg = BartConfig(
        vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=64,
    )  # fmt: skip
    return BartForConditionalGeneration(cfg).eval()


@pytest.fixture(scope="module", params=["t5", "bart"])
def setup(request):
    model = _t5() if request.param == "t5" else _bart()
    conf = model.config
    seqs = _random_sequences(NUM_ITEMS, seed=1)
    trie = CompiledTrie.build(
        seqs, decoder_start_token_id=conf.decoder_start_token_id, eos_token_id=conf.eos_token_id
    )
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(3, VOCAB, (4, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[3, 5:] = 0
    ids[mask == 0] = conf.pad_token_id
    return model, trie, seqs, ids, mask


def _hf(model, trie, ids, mask, k, fn=None, **kw):
    """The reference protocol. forced_eos_token_id=None: BART's default would overwrite the last step's
    log-prob of eos with 0 at max length (a scoring artefact, not the model's probability)."""
    out = model.generate(
        input_ids=ids, attention_mask=mask, num_beams=k, num_return_sequences=k, do_sample=False,
        max_new_tokens=kw.pop("max_new_tokens", trie.max_depth),
        prefix_allowed_tokens_fn=fn or trie.prefix_allowed_tokens_fn(), forced_eos_token_id=None,
        output_scores=True, return_dict_in_generate=True, **kw,
    )  # fmt: skip
    b = ids.shape[0]
    items = torch.tensor([trie.lookup(s.tolist()) for s in out.sequences]).view(b, k)
    return items, out.sequences_scores.view(b, k), out.sequences.view(b, k, -1)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("k", "length_penalty", "early_stopping"), [(10, 1.0, False), (6, 0.5, True), (8, 2.0, "never")]
)
def test_same_items_and_scores_as_hf(setup, k, length_penalty, early_stopping):
    model, trie, _, ids, mask = setup
    ref_items, ref_scores, _ = _hf(
        model, trie, ids, mask, k, length_penalty=length_penalty, early_stopping=early_stopping
    )
    ours = constrained_beam_search(
        model,
        ids,
        mask,
        trie,
        num_beams=k,
        top_k=k,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
    )
    # HF may fill trailing slots with ~-1e9 "hypotheses" (a finished beam re-emitting eos, see trie.py);
    # they are not items: ours reports -1 / -inf there. Everything real must be identical.
    real = ref_scores > -1e7
    assert real.all() if early_stopping is not True else real[:, 0].all()
    assert torch.equal(ours.items[real], ref_items[real])
    assert (ours.items[~real] == -1).all() and torch.isneginf(ours.scores[~real]).all()
    torch.testing.assert_close(ours.scores[real], ref_scores[real], atol=1e-5, rtol=0)


@pytest.mark.unit
def test_top_k_below_num_beams_is_prefix_of_hf(setup):
    model, trie, _, ids, mask = setup
    ref_items, ref_scores, _ = _hf(model, trie, ids, mask, 8)
    ours = constrained_beam_search(model, ids, mask, trie, num_beams=8, top_k=3)
    assert torch.equal(ours.items, ref_items[:, :3])
    torch.testing.assert_close(ours.scores, ref_scores[:, :3], atol=1e-5, rtol=0)


@pytest.mark.unit
def test_sequences_decode_to_their_items_without_duplicates(setup):
    model, trie, seqs, ids, mask = setup
    res = constrained_beam_search(model, ids, mask, trie, num_beams=10, top_k=10)
    start = model.config.decoder_start_token_id
    for b in range(ids.shape[0]):
        row = res.items[b].tolist()
        assert len(set(row)) == len(row) and min(row) >= 0
        for j, item in enumerate(row):
            generated = res.sequences[b, j].tolist()
            assert trie.lookup(generated) == item
            assert generated[: len(seqs[item]) + 2] == [start, *seqs[item], trie.eos_token_id]
        assert res.scores[b].tolist() == sorted(res.scores[b].tolist(), reverse=True)


@pytest.mark.unit
def test_batched_equals_one_query_at_a_time(setup):
    model, trie, _, ids, mask = setup
    batched = constrained_beam_search(model, ids, mask, trie, num_beams=6, top_k=6)
    for b in range(ids.shape[0]):
        n = int(mask[b].sum())
        single = constrained_beam_search(
            model, ids[b : b + 1, :n], mask[b : b + 1, :n], trie, num_beams=6, top_k=6
        )
        assert torch.equal(single.items[0], batched.items[b])
        torch.testing.assert_close(single.scores[0], batched.scores[b], atol=1e-5, rtol=0)


@pytest.mark.unit
def test_exclusion_equals_search_over_trie_without_those_items(setup):
    model, trie, seqs, ids, mask = setup
    k = 8
    first = constrained_beam_search(model, ids, mask, trie, num_beams=k, top_k=k)
    # Exclude each query's top 3 plus a few other items (also ones sharing prefixes with survivors).
    exclude = [first.items[b, :3].tolist() + [b, 100 + b, 7] for b in range(ids.shape[0])]
    ours = constrained_beam_search(model, ids, mask, trie, num_beams=k, top_k=k, exclude_items=exclude)
    conf = model.config
    for b, ex in enumerate(exclude):
        assert not set(ours.items[b].tolist()) & set(ex)
        kept = [i for i in range(len(seqs)) if i not in set(ex)]
        sub = CompiledTrie.build(
            [seqs[i] for i in kept], kept, decoder_start_token_id=conf.decoder_start_token_id,
            eos_token_id=conf.eos_token_id,
        )  # fmt: skip
        n = int(mask[b].sum())
        ref_idx, ref_scores, _ = _hf(model, sub, ids[b : b + 1, :n], mask[b : b + 1, :n], k)
        ref_items = [sub.item_ids[i] for i in ref_idx[0].tolist()]
        assert ours.items[b].tolist() == ref_items
        torch.testing.assert_close(ours.scores[b], ref_scores[0], atol=1e-5, rtol=0)


@pytest.mark.unit
def test_exclusion_as_padded_tensor(setup):
    model, trie, _, ids, mask = setup
    as_list = constrained_beam_search(
        model, ids, mask, trie, 5, 5, exclude_items=[[1, 2], [3], [], [4, 5, 6]]
    )
    padded = torch.tensor([[1, 2, -1], [3, -1, -1], [-1, -1, -1], [4, 5, 6]])
    as_tensor = constrained_beam_search(model, ids, mask, trie, 5, 5, exclude_items=padded)
    assert torch.equal(as_list.items, as_tensor.items)


@pytest.mark.unit
def test_fewer_items_than_top_k_pads_with_minus_one_and_neg_inf(setup):
    model, _, _, ids, mask = setup
    conf = model.config
    tiny = CompiledTrie.build(
        [[10, 11], [10], [12]], ["a", "b", "c"], decoder_start_token_id=conf.decoder_start_token_id,
        eos_token_id=conf.eos_token_id,
    )  # fmt: skip
    res = constrained_beam_search(model, ids, mask, tiny, num_beams=5, top_k=5)
    assert sorted(res.items[:, :3].flatten().tolist()) == sorted([0, 1, 2] * ids.shape[0])
    assert (res.items[:, 3:] == -1).all() and torch.isneginf(res.scores[:, 3:]).all()
    assert torch.isfinite(res.scores[:, :3]).all()
    # Excluding two of the three items leaves one per query.
    res = constrained_beam_search(model, ids, mask, tiny, num_beams=5, top_k=2, exclude_items=[[0, 1]] * 4)
    assert res.items[:, 0].tolist() == [2] * 4 and (res.items[:, 1] == -1).all()


@pytest.mark.unit
def test_unconstrained_mode_equals_hf_generate(setup):
    model, _, _, ids, mask = setup
    out = model.generate(
        input_ids=ids, attention_mask=mask, num_beams=6, num_return_sequences=6, do_sample=False,
        max_new_tokens=5, forced_eos_token_id=None, output_scores=True, return_dict_in_generate=True,
    )  # fmt: skip
    ours = constrained_beam_search(model, ids, mask, None, num_beams=6, top_k=6, max_new_tokens=5)
    torch.testing.assert_close(ours.scores, out.sequences_scores.view(4, 6), atol=1e-5, rtol=0)
    ref = out.sequences.view(4, 6, -1)
    assert torch.equal(ours.sequences[:, :, : ref.shape[-1]], ref)
    assert (ours.items == -1).all()


@pytest.mark.unit
def test_timings_are_filled(setup):
    model, trie, _, ids, mask = setup
    t = StepTimings()
    res = constrained_beam_search(model, ids, mask, trie, 4, 4, timings=t)
    assert t.steps == res.steps > 0 and t.forward > 0 and t.constraint > 0 and t.total > t.constraint


@pytest.mark.unit
def test_bad_arguments(setup):
    model, trie, _, ids, mask = setup
    with pytest.raises(ValueError, match=r"top_k must be in \[1, num_beams=4\], got 5"):
        constrained_beam_search(model, ids, mask, trie, num_beams=4, top_k=5)
    with pytest.raises(ValueError, match="max_new_tokens=2 < trie depth"):
        constrained_beam_search(model, ids, mask, trie, 4, 4, max_new_tokens=2)
    with pytest.raises(ValueError, match=f"item index {NUM_ITEMS}"):
        constrained_beam_search(model, ids, mask, trie, 4, 4, exclude_items=[[NUM_ITEMS]] * 4)
    with pytest.raises(ValueError, match=r"one row per query \(4\)"):
        constrained_beam_search(model, ids, mask, trie, 4, 4, exclude_items=[[1]])
    with pytest.raises(ValueError, match="early_stopping"):
        constrained_beam_search(model, ids, mask, trie, 4, 4, early_stopping="sometimes")
    with pytest.raises(ValueError, match="needs max_new_tokens"):
        constrained_beam_search(model, ids, mask, None, 4, 4)
    other = CompiledTrie.build([[5]], decoder_start_token_id=99, eos_token_id=98)
    with pytest.raises(ValueError, match="decoder_start=99, eos=98"):
        constrained_beam_search(model, ids, mask, other, 4, 4)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    model = _t5()
    conf = model.config
    seqs = _random_sequences(300, seed=3)
    trie = CompiledTrie.build(
        seqs, decoder_start_token_id=conf.decoder_start_token_id, eos_token_id=conf.eos_token_id
    )
    ids = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    cpu = constrained_beam_search(model, ids, mask, trie, 5, 5)
    gpu = constrained_beam_search(model.cuda(), ids.cuda(), mask.cuda(), trie.to("cuda"), 5, 5)
    assert torch.equal(gpu.items.cpu(), cpu.items)
    torch.testing.assert_close(gpu.scores.cpu(), cpu.scores, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_beauty_trie_round_trips_every_item(shared_data, t5_tokenizer_dir):
    from fusionrec.bench.decode import textual_ids
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(t5_tokenizer_dir))
    asins, ids, _ = textual_ids(shared_data / "amazon_beauty" / "item_plain_text.txt")
    assert len(asins) == 12101 and len(set(ids)) == 12101
    trie = CompiledTrie.from_tokenizer(tok, ids, asins, decoder_start_token_id=tok.pad_token_id)
    # Walk the tokenizer's own encodings (with its trailing </s>) through the trie, all items at once.
    enc = tok(ids, padding=True, return_tensors="pt").input_ids
    nodes = torch.zeros(len(ids), dtype=torch.long)
    for d in range(enc.shape[1]):
        live = trie.node_item[nodes] < 0
        nodes = torch.where(live, trie.step(nodes, enc[:, d]), nodes)
    assert trie.node_item[nodes].tolist() == list(range(12101))
    assert trie.lookup([tok.pad_token_id, *tok(ids[5]).input_ids]) == 5


@pytest.mark.unit
@pytest.mark.parametrize(("k", "length_penalty"), [(5, 1.0), (12, 0.0)])
def test_renormalized_search_equals_hf_renormalize_logits(setup, k, length_penalty):
    """The trie-softmax scoring (each step's softmax over the node's children) is HF's constrained search
    with ``renormalize_logits=True``."""
    model, trie, _, ids, mask = setup
    ref_items, ref_scores, _ = _hf(
        model, trie, ids, mask, k, renormalize_logits=True, length_penalty=length_penalty
    )
    ours = constrained_beam_search(
        model, ids, mask, trie, num_beams=k, top_k=k, renormalize=True, length_penalty=length_penalty
    )
    assert (ref_scores > -1e7).all()
    assert torch.equal(ours.items, ref_items)
    torch.testing.assert_close(ours.scores, ref_scores, atol=1e-5, rtol=0)
    plain = constrained_beam_search(
        model, ids, mask, trie, num_beams=k, top_k=k, length_penalty=length_penalty
    )
    assert (plain.scores < ours.scores - 1e-3).any()  # renormalising raises every log-prob: it did act


@pytest.mark.unit
def test_renormalized_t5_search_computes_only_the_emitted_columns(setup, monkeypatch):
    """Renormalised, a T5 head computes only the trie's emitted tokens' logits (the scores equal HF's full
    computation: the test above); BART keeps its full head (a bias follows it); unrenormalised, no model does."""
    from fusionrec.trainer.models.heads import ColumnHead

    model, trie, _, ids, mask = setup
    widths = []
    forward = ColumnHead.forward
    monkeypatch.setattr(
        ColumnHead, "forward", lambda self, h: widths.append(len(self.columns)) or forward(self, h)
    )
    constrained_beam_search(model, ids, mask, trie, num_beams=4, top_k=4)
    assert widths == []
    constrained_beam_search(model, ids, mask, trie, num_beams=4, top_k=4, renormalize=True)
    if model.config.model_type == "t5":
        assert widths and set(widths) == {trie.emitted_tokens.numel()} and widths[0] < model.config.vocab_size
    else:
        assert widths == []
    assert isinstance(model.get_output_embeddings(), torch.nn.Linear)  # the full head is back


@pytest.mark.unit
def test_model_config_trie_softmax_sets_renormalized_item_likelihood_scoring(setup):
    """A model trained with the trie softmax says so in its config: the search then renormalises and ranks
    by the summed log-prob (= log P(item), length_penalty 0) unless told otherwise."""
    model, trie, _, ids, mask = setup
    explicit = constrained_beam_search(
        model, ids, mask, trie, num_beams=8, top_k=8, renormalize=True, length_penalty=0.0
    )
    model.config.trie_softmax = True
    try:
        by_config = constrained_beam_search(model, ids, mask, trie, num_beams=8, top_k=8)
        normed = constrained_beam_search(model, ids, mask, trie, num_beams=8, top_k=8, length_penalty=1.0)
    finally:
        del model.config.trie_softmax
    assert torch.equal(by_config.items, explicit.items) and torch.equal(by_config.scores, explicit.scores)
    assert not torch.equal(normed.scores, explicit.scores)
    with pytest.raises(ValueError, match="needs a trie"):
        constrained_beam_search(
            model, ids, mask, None, num_beams=2, top_k=2, max_new_tokens=3, renormalize=True
        )
