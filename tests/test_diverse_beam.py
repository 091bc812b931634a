"""Diverse beam search: equals HF beam search at G=1 (the anchor), equals a plain-Python DBS reference at
λ > 0, and does not depend on how items are batched."""

from __future__ import annotations

import math

import pytest
import torch
from fusionrec.trainer.idgen.diverse_beam import DiverseBeamConfig, diverse_beam_search
from fusionrec.trainer.models import ModelConfig, build_seq2seq, train_tokenizer

pytestmark = pytest.mark.unit

TEXTS = [
    "title: acme shampoo 8 oz; price: 5",
    "title: verde soft cream for dry skin",
    "title: nordic lotion; brand: nordic",
    "title: lumina serum 1 oz, vitamin c",
    "title: sol conditioner",
    "title: acme conditioner 16 oz; price: 10",
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    corpus = [f"{t} {w}" for t in TEXTS for w in ("red", "blue", "green", "matte", "gloss", "mint")] * 10
    return train_tokenizer(corpus, tmp_path_factory.mktemp("tok") / "t", vocab_size=160)


def _model(tok, name: str, eos_bias: float = 0.0):
    model = build_seq2seq(ModelConfig(name, d_model=32, d_ff=64, num_heads=2, seed=1), tokenizer=tok).eval()
    if eos_bias:  # make hypotheses finish at different lengths (exercises finishing and early retirement)
        with torch.no_grad():
            model.get_output_embeddings().weight[tok.eos_token_id] *= 0.0
            model.get_output_embeddings().weight[tok.eos_token_id] += (
                eos_bias * model.get_output_embeddings().weight.mean(0)
            )
    return model


def _trim(row: list[int], eos: int) -> list[int]:
    """A hypothesis' tokens: up to and including its EOS, or the whole row if it ran to max length (the
    model may legitimately emit the pad id as a token, so padding cannot be stripped by value)."""
    return row[: row.index(eos) + 1] if eos in row else row


def _same_hypotheses(ours: torch.Tensor, hf: torch.Tensor, eos: int, pad: int) -> bool:
    width = hf.shape[-1]
    for a, b in zip(ours.reshape(-1, ours.shape[-1]).tolist(), hf.reshape(-1, width).tolist(), strict=True):
        ta = _trim(a, eos)
        if ta != _trim(b, eos) or any(t != pad for t in a[len(ta) :]):
            return False
    return True


def _enc(tok, texts=TEXTS):
    return tok(texts, return_tensors="pt", padding=True)


@pytest.mark.parametrize("name", ["tiny-t5", "tiny-bart"])
@pytest.mark.parametrize(("beams", "min_new", "max_new"), [(4, 1, 9), (3, 2, 6), (5, 0, 12)])
def test_one_group_equals_hf_beam_search(tok, name, beams, min_new, max_new):
    model = _model(tok, name)
    enc = _enc(tok)
    cfg = DiverseBeamConfig(num_groups=1, beams_per_group=beams, diversity_penalty=0.0,
                            min_new_tokens=min_new, max_new_tokens=max_new)  # fmt: skip
    ours = diverse_beam_search(model, enc["input_ids"], enc["attention_mask"], cfg)
    hf = model.generate(**enc, num_beams=beams, num_return_sequences=beams, max_new_tokens=max_new,
                        min_new_tokens=min_new, do_sample=False, early_stopping=False, length_penalty=1.0,
                        return_dict_in_generate=True, output_scores=True)  # fmt: skip
    n = len(TEXTS)
    hf_seq = hf.sequences[:, 1:].reshape(n, beams, -1)
    # transformers fills finished beams with `pad or eos` (pad id 0 is falsy): compare up to each EOS.
    assert _same_hypotheses(ours.sequences, hf_seq, tok.eos_token_id, tok.pad_token_id)
    torch.testing.assert_close(ours.scores, hf.sequences_scores.reshape(n, beams), atol=1e-5, rtol=0)


def test_one_group_equals_hf_with_early_finishes(tok):
    model = _model(tok, "tiny-t5", eos_bias=3.0)
    enc = _enc(tok)
    cfg = DiverseBeamConfig(
        num_groups=1, beams_per_group=4, diversity_penalty=0.0, min_new_tokens=1, max_new_tokens=12
    )
    ours = diverse_beam_search(model, enc["input_ids"], enc["attention_mask"], cfg)
    hf = model.generate(**enc, num_beams=4, num_return_sequences=4, max_new_tokens=12, min_new_tokens=1,
                        return_dict_in_generate=True, output_scores=True)  # fmt: skip
    lengths = (ours.sequences != model.config.pad_token_id).sum(-1)
    assert lengths.min() < 12  # some hypotheses really did finish early
    hf_seq = hf.sequences[:, 1:].reshape(len(TEXTS), 4, -1)
    assert _same_hypotheses(ours.sequences, hf_seq, tok.eos_token_id, tok.pad_token_id)
    torch.testing.assert_close(ours.scores, hf.sequences_scores.reshape(len(TEXTS), 4), atol=1e-5, rtol=0)


def _reference_dbs(model, input_ids, groups: int, lam: float, min_new: int, max_new: int):
    """Plain-Python DBS with one beam per group, no KV cache: a full decoder pass per hypothesis and step.

    Per group: transformers' beam step with B = 1 (top-2 candidates; EOS among the top-1 finishes a
    hypothesis; the best non-finished candidate runs on), penalty λ per earlier group's token at this step.
    """
    eos, start = model.config.eos_token_id, model.config.decoder_start_token_id
    enc = model.get_encoder()(input_ids=input_ids).last_hidden_state
    run = [([], 0.0) for _ in range(groups)]
    fin: list[tuple[list[int], float] | None] = [None] * groups
    is_open = [True] * groups
    for step in range(max_new):
        chosen: list[int] = []
        was_open = list(is_open)
        for g in range(groups):
            toks, score = run[g]
            dec = torch.tensor([[start, *toks]])
            logits = model(encoder_outputs=(enc,), decoder_input_ids=dec).logits[0, -1].double()
            logp = logits - torch.logsumexp(logits, 0)
            if step < min_new:
                logp[eos] = -math.inf
            for t, gg in chosen:
                if was_open[gg]:
                    logp[t] -= lam
            top = torch.topk(logp + score, 2)
            cands = [(int(i), float(v)) for v, i in zip(top.values, top.indices, strict=True)]
            hits = [t == eos or step + 1 == max_new for t, _ in cands]
            nxt = next((c for c, h in zip(cands, hits, strict=True) if not h), None)
            if hits[0] and is_open[g]:
                norm = cands[0][1] / (step + 1)
                if fin[g] is None or norm > fin[g][1]:
                    fin[g] = ([*toks, cands[0][0]], norm)
            run[g] = ([*toks, nxt[0]], nxt[1]) if nxt else (toks + [cands[0][0]], -1e9)
            chosen.append((run[g][0][-1], g))
            worst = fin[g][1] if fin[g] is not None else -1e9
            is_open[g] = is_open[g] and run[g][1] / (step + 1) > worst and not all(hits)
        if not any(is_open):
            break
    return sorted((f for f in fin if f is not None), key=lambda f: -f[1])


@pytest.mark.parametrize(("lam", "eos_bias"), [(1.5, 0.0), (1.0, 3.0), (4.0, 2.0)])
def test_diverse_groups_equal_plain_python_reference(tok, lam, eos_bias):
    model = _model(tok, "tiny-t5", eos_bias=eos_bias)
    cfg = DiverseBeamConfig(
        num_groups=4, beams_per_group=1, diversity_penalty=lam, min_new_tokens=1, max_new_tokens=7
    )
    enc = _enc(tok)
    ours = diverse_beam_search(model, enc["input_ids"], enc["attention_mask"], cfg)
    for i, text in enumerate(TEXTS):
        with torch.no_grad():
            ref = _reference_dbs(model, tok([text], return_tensors="pt")["input_ids"], 4, lam, 1, 7)
        assert len(ref) == 4
        for k, (toks, score) in enumerate(ref):
            assert _trim(ours.sequences[i, k].tolist(), tok.eos_token_id) == toks, (i, k)
            assert abs(float(ours.scores[i, k]) - score) < 1e-4


def test_penalty_makes_groups_diverse(tok):
    model = _model(tok, "tiny-t5")
    enc = _enc(tok)
    same = diverse_beam_search(
        model, enc["input_ids"], enc["attention_mask"], DiverseBeamConfig(diversity_penalty=0.0)
    )
    diverse = diverse_beam_search(
        model, enc["input_ids"], enc["attention_mask"], DiverseBeamConfig(diversity_penalty=5.0)
    )
    # Without a penalty all 10 one-beam groups run the same search; with it, first tokens differ.
    assert all(len({tuple(s.tolist()) for s in same.sequences[i]}) == 1 for i in range(len(TEXTS)))
    assert all(len({int(s[0]) for s in diverse.sequences[i]}) == 10 for i in range(len(TEXTS)))


def test_batching_does_not_change_results(tok):
    model = _model(tok, "tiny-t5", eos_bias=2.0)
    cfg = DiverseBeamConfig(num_groups=5, diversity_penalty=2.0, min_new_tokens=1, max_new_tokens=8)
    enc = _enc(tok)
    batched = diverse_beam_search(model, enc["input_ids"], enc["attention_mask"], cfg)
    for i, text in enumerate(TEXTS):
        one = _enc(tok, [text])
        single = diverse_beam_search(model, one["input_ids"], one["attention_mask"], cfg)
        assert torch.equal(single.sequences[0], batched.sequences[i])
        torch.testing.assert_close(single.scores[0], batched.scores[i], atol=1e-5, rtol=0)


def test_config_validation():
    with pytest.raises(ValueError, match="num_groups"):
        DiverseBeamConfig(num_groups=0)
    with pytest.raises(ValueError, match="diversity_penalty"):
        DiverseBeamConfig(diversity_penalty=-1)
    with pytest.raises(ValueError, match="min_new_tokens"):
        DiverseBeamConfig(min_new_tokens=5, max_new_tokens=3)


@pytest.mark.parametrize("eos_bias", [0.0, 2.0, 4.0])
def test_stable_penalty_range_holds_on_a_lambda_grid(tok, eos_bias):
    """Every λ' strictly inside a run's `lambda_range` gives that run's hypotheses (as a set per item):
    the range is a proof, checked here against real runs on a grid of λ, with early finishes (EOS bias)."""
    model = _model(tok, "tiny-t5", eos_bias=eos_bias)
    enc = _enc(tok)
    grid = [0.25 * i for i in range(1, 41)]
    runs = {}
    for lam in grid:
        cfg = DiverseBeamConfig(num_groups=4, diversity_penalty=lam, min_new_tokens=1, max_new_tokens=7)
        runs[lam] = diverse_beam_search(model, enc["input_ids"], enc["attention_mask"], cfg)
    checked = 0
    for lam, out in runs.items():
        for i in range(len(TEXTS)):
            lo, hi = out.lambda_range[i].tolist()
            assert lo <= lam <= hi
            mine = sorted(map(tuple, out.sequences[i].tolist()))
            for other in grid:
                if other != lam and lo < other < hi:
                    assert sorted(map(tuple, runs[other].sequences[i].tolist())) == mine, (lam, other, i)
                    checked += 1
    assert checked > 100  # the ranges are not trivially empty


def test_no_range_is_claimed_without_one_beam_groups(tok):
    model = _model(tok, "tiny-t5")
    enc = _enc(tok)
    for cfg in (DiverseBeamConfig(num_groups=3, beams_per_group=2, diversity_penalty=1.0),
                DiverseBeamConfig(num_groups=1, diversity_penalty=1.0)):  # fmt: skip
        out = diverse_beam_search(model, enc["input_ids"], enc["attention_mask"], cfg)
        assert torch.equal(out.lambda_range, torch.full((len(TEXTS), 2), 1.0, dtype=torch.float64))
