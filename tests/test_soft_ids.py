"""Soft-ID splicing: one-hot soft IDs reproduce the hard-token forward; gradients reach only the probs."""

from __future__ import annotations

import pytest
import torch
from fusionrec.trainer.models.soft_ids import SoftIDRecommender
from transformers import T5Config, T5ForConditionalGeneration

pytestmark = pytest.mark.unit


def _tiny_t5() -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0
    )
    return T5ForConditionalGeneration(cfg).eval()


def test_one_hot_soft_ids_equal_hard_tokens_and_tie_kept():
    model = SoftIDRecommender(_tiny_t5())
    assert model.model.lm_head.weight is model.embedding.weight or not model.config.tie_word_embeddings
    ids = torch.tensor([[5, 6, 7, 8, 1], [9, 10, 11, 1, 0]])
    mask = (ids != 0).long()
    labels = torch.tensor([[12, 13, 1], [14, 1, -100]])
    hard = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    index = torch.tensor([[0, 1], [0, 2], [1, 0]])  # positions of "soft" ID tokens
    probs = torch.nn.functional.one_hot(ids[index[:, 0], index[:, 1]], 50).float()
    soft = model(input_ids=ids, attention_mask=mask, labels=labels, soft_probs=probs, soft_index=index).loss
    assert torch.allclose(hard, soft, atol=1e-6)


def test_gradient_reaches_probs_not_frozen_recommender():
    model = SoftIDRecommender(_tiny_t5())
    for p in model.parameters():
        p.requires_grad_(False)
    ids = torch.tensor([[5, 6, 7, 1]])
    logits = torch.randn(2, 50, requires_grad=True)
    probs = logits.softmax(-1)
    out = model(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        labels=torch.tensor([[12, 1]]),
        soft_probs=probs,
        soft_index=torch.tensor([[0, 1], [0, 2]]),
    )
    out.loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_output_columns_give_those_logit_columns_and_restore_the_head():
    model = SoftIDRecommender(_tiny_t5())
    ids = torch.tensor([[5, 6, 7, 8, 1], [9, 10, 11, 1, 0]])
    mask = (ids != 0).long()
    dec = torch.tensor([[0, 12, 13], [0, 14, 1]])
    cols = torch.tensor([1, 12, 13, 14, 40])
    index = torch.tensor([[0, 1], [1, 0]])
    probs = torch.softmax(torch.randn(2, 50), -1)
    for soft in ({}, {"soft_probs": probs, "soft_index": index}):
        full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, **soft).logits
        part = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, output_columns=cols, **soft)
        assert part.logits.shape == (2, 3, 5)
        torch.testing.assert_close(part.logits, full[..., cols])
    assert isinstance(model.model.lm_head, torch.nn.Linear)
    assert model.model.lm_head.weight is model.embedding.weight  # still tied
