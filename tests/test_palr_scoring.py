"""PALR re-ranking's shared-prompt scoring: the packed candidates over one prompt KV cache
(`score_candidates`) give the same log-probs and the same ranking as scoring every (prompt, candidate)
pair on its own, without any cache (`score_pairs`)."""

from __future__ import annotations

import random

import pytest
import torch
from fusionrec.trainer.llm.scoring import (
    EncodedPair,
    encode_pair,
    score_candidates,
    score_pairs,
    token_logprobs,
)
from fusionrec.trainer.models.causal_lm import CausalLMConfig, LoRAConfig, build_ranker
from fusionrec.trainer.recipes.palr.data import PALRConfig, PALRTaskConfig, palr_answer, palr_prompt
from fusionrec.trainer.recipes.palr.rerank import MostPopular, rerank_ranks

pytestmark = pytest.mark.unit

WORDS = ["Shea", "Butter", "Rose", "Oil", "Matte", "Lip", "Gel", "Cream", "Night", "Serum", "Mask", "Clay"]


@pytest.fixture(scope="module")
def tiny():
    model, tok = build_ranker(CausalLMConfig(max_length=4096, lora=LoRAConfig(targets="all-linear")))
    with torch.no_grad():  # non-zero LoRA B: the adapters take part in every forward below
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model.eval(), tok


def _titles(n: int, seed: int = 0) -> list[str]:
    """Distinct titles of 1-4 words, several sharing their first words (as brands do)."""
    rng, out = random.Random(seed), []
    while len(out) < n:
        title = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
        if title not in out:
            out.append(title)
    return out


def _uncached(model, tok, prompt: str, answers: list[str]):
    pairs = [encode_pair(tok, prompt, a, 4096, append_eos=False) for a in answers]
    return pairs, score_pairs(model, pairs, tok.pad_token_id, batch_size=7)


def test_packed_candidates_equal_uncached_per_candidate_scores(tiny):
    model, tok = tiny
    titles = _titles(50)
    prompt = palr_prompt(titles[:5], titles, PALRTaskConfig(n_targets=1))
    pairs, reference = _uncached(model, tok, prompt, [palr_answer([t]) for t in titles])
    packed = score_candidates(model, pairs[0].prompt_ids, [p.answer_ids for p in pairs], tok.pad_token_id)
    assert packed.mask.tolist() == reference.mask.flip(-1).tolist()  # right- vs left-aligned
    # score_pairs right-aligns answers, score_candidates left-aligns them: compare per-candidate sequences.
    for row in range(len(pairs)):
        torch.testing.assert_close(
            packed.token_logp[row][packed.mask[row]],
            reference.token_logp[row][reference.mask[row]],
            rtol=1e-5,
            atol=1e-5,
        )
    torch.testing.assert_close(packed.mean, reference.mean, rtol=1e-5, atol=1e-5)
    assert packed.mean.argsort(descending=True).tolist() == reference.mean.argsort(descending=True).tolist()


def test_one_token_candidates_and_duplicates(tiny):
    model, tok = tiny
    prompt_ids = tok("### Output:")["input_ids"]
    cands = [[40], [41, 42], [40], [43, 44, 45]]  # two identical candidates: identical scores
    packed = score_candidates(model, prompt_ids, cands, tok.pad_token_id)
    ref = [score_pairs(model, [EncodedPair(prompt_ids, c)], tok.pad_token_id).total for c in cands]
    torch.testing.assert_close(packed.total, torch.cat(ref), rtol=1e-5, atol=1e-5)
    assert packed.total[0] == packed.total[2]
    with pytest.raises(ValueError, match="non-empty"):
        score_candidates(model, prompt_ids, [[40], []], tok.pad_token_id)


def test_rerank_ranks_equal_an_uncached_reranking(tiny):
    model, tok = tiny
    titles = _titles(30, seed=1)
    items = [f"i{j}" for j in range(30)]
    text = dict(zip(items, titles, strict=True))
    seqs = [items[j : j + 6] for j in range(0, 24, 3)]
    retriever = MostPopular(seqs)
    cfg = PALRConfig(top_n=20, tasks=PALRTaskConfig(n_targets=1))
    users = [(s[:-1], s[-1]) for s in seqs[:3]]
    got = rerank_ranks(model, tok, users, text, retriever, cfg)
    for (history, target), (_, llm_rank) in zip(users, got, strict=True):
        cands = retriever.retrieve(history, cfg.top_n)
        prompt = palr_prompt([text[i] for i in history], [text[i] for i in cands], cfg.tasks)
        _, ref = _uncached(model, tok, prompt, [palr_answer([text[i]]) for i in cands])
        order = [c for _, c in sorted(zip(ref.mean.tolist(), cands, strict=True), key=lambda sc: -sc[0])]
        assert llm_rank == (order.index(target) if target in order else None)


def test_token_logprobs_is_log_softmax_gather_across_chunks():
    logits = torch.randn(150, 37)  # > one chunk of rows
    targets = torch.randint(0, 37, (150,))
    expected = torch.log_softmax(logits, -1)[torch.arange(150), targets]
    torch.testing.assert_close(token_logprobs(logits, targets), expected)
    assert token_logprobs(logits[:0], targets[:0]).shape == (0,)


def test_an_attention_that_ignores_4d_masks_is_refused(tiny, monkeypatch):
    model, tok = tiny
    monkeypatch.setattr(model.config, "_attn_implementation_internal", "flash_attention_2")
    with pytest.raises(ValueError, match="flash_attention_2 ignores"):
        score_candidates(model, tok("x")["input_ids"], [[40]], tok.pad_token_id)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_scoring_a_model_on_cuda_from_host_batches_equals_the_cpu(tiny):
    """score_pairs / score_candidates are called outside the Trainer (DMPO's reference precompute, PALR's
    re-ranking, AUC) with host tensors: on a CUDA model they run there and return the CPU's numbers."""
    import copy

    model, tok = tiny
    titles = _titles(20)
    prompt = palr_prompt(titles[:5], titles, PALRTaskConfig(n_targets=1))
    answers = [palr_answer([t]) for t in titles]
    pairs, cpu_pairs = _uncached(model, tok, prompt, answers)
    cpu_cand = score_candidates(model, pairs[0].prompt_ids, [p.answer_ids for p in pairs], tok.pad_token_id)
    torch.backends.cuda.matmul.allow_tf32 = False
    gpu_model = copy.deepcopy(model).cuda()
    _, gpu_pairs = _uncached(gpu_model, tok, prompt, answers)
    gpu_cand = score_candidates(gpu_model, pairs[0].prompt_ids, [p.answer_ids for p in pairs], tok.pad_token_id)
    for cpu, gpu in ((cpu_pairs, gpu_pairs), (cpu_cand, gpu_cand)):
        assert gpu.token_logp.device.type == "cpu" and gpu.mask.tolist() == cpu.mask.tolist()
        torch.testing.assert_close(gpu.token_logp, cpu.token_logp, rtol=1e-4, atol=1e-4)
