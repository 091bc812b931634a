"""PALR fine-tuning's answer-only labels, position by position, through the production path:
`palr_example` -> `encode_pair` -> `collate_pairs` -> `answer_logprobs` / `sft_loss` (what `PALRModule`
runs). Tiny random Llama with the byte-level tokenizer: one token per ASCII character, so every position is
computed by hand (printable ASCII c -> ord(c) - 30, space -> 223, EOS 2, pad 0)."""

from __future__ import annotations

import random

import pytest
import torch
from fusionrec.trainer.llm.scoring import answer_logprobs, collate_pairs, encode_pair, sft_loss
from fusionrec.trainer.models.causal_lm import CausalLMConfig, build_ranker
from fusionrec.trainer.recipes.palr.data import PALRTaskConfig, palr_example

pytestmark = pytest.mark.unit

TASKS = PALRTaskConfig(n_targets=1, swap_prob=0.0)
PROMPT_AB = (
    "### Instruction: Recommend 1 other items based on user's history.\n"
    '### Input: User has purchased the following products "ab".\n### Output:'
)
EOS, PAD = 2, 0


@pytest.fixture(scope="module")
def tiny():
    model, tok = build_ranker(CausalLMConfig(max_length=512))
    with torch.no_grad():  # non-zero LoRA B so that the adapters are part of the checked forward
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model.eval(), tok


def _examples(tok):
    """Two PALR Recommend examples of different lengths, encoded as PALRModule._encode does."""
    rng = random.Random(0)
    long_ = palr_example(["ab"], ["c"], None, TASKS, rng)  # prompt P, answer ' "c"' + EOS = 5
    short = palr_example(["a"], ["xyz"], None, TASKS, rng)  # prompt P - 1, answer ' "xyz"' + EOS = 7
    assert long_ == (PROMPT_AB, ' "c"')
    assert short == (PROMPT_AB.replace('"ab"', '"a"'), ' "xyz"')
    return [encode_pair(tok, p, a, 512) for p, a in (long_, short)]


def _labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """HF-style labels of a collated batch: the token where the loss is taken, -100 elsewhere."""
    return torch.where(batch["answer_mask"], batch["input_ids"], torch.full_like(batch["input_ids"], -100))


def test_answer_tokens_and_eos_are_labels_prompt_and_padding_are_not(tiny):
    _, tok = tiny
    pairs = _examples(tok)
    P = len(PROMPT_AB)  # noqa: N806 - the prompt length of the hand computation
    assert pairs[0].answer_ids == [223, 4, ord("c") - 30, 4, EOS]
    assert pairs[1].answer_ids == [223, 4, ord("x") - 30, ord("y") - 30, ord("z") - 30, 4, EOS]
    assert (len(pairs[0].prompt_ids), len(pairs[1].prompt_ids)) == (P, P - 1)
    batch = collate_pairs(pairs, PAD)
    width = P + 6  # row 1: (P - 1) + 7; row 0: P + 5, one pad on the left
    labels = _labels(batch)
    assert labels.shape == (2, width)
    assert labels[0].tolist() == [-100] * (1 + P) + pairs[0].answer_ids  # pad + prompt masked
    assert labels[1].tolist() == [-100] * (P - 1) + pairs[1].answer_ids
    assert batch["input_ids"][0, 0] == PAD and batch["attention_mask"][0].tolist() == [0] + [1] * (P + 5)
    assert batch["position_ids"][0, 1:].tolist() == list(range(P + 5))  # the pad shifts no position
    assert batch["position_ids"][1].tolist() == list(range(P + 6))


def test_eos_stays_a_label_when_the_pad_token_is_eos(tiny):
    """SmolLM2's pad token IS its EOS (id 2): the mask must come from the layout, not from `id != pad`."""
    _, tok = tiny
    pairs = _examples(tok)
    labels = _labels(collate_pairs(pairs, pad_id=EOS))
    assert labels[:, -1].tolist() == [EOS, EOS]
    assert labels[0, 0] == -100  # the left pad (also id 2) is not a label
    assert (labels != -100).sum(-1).tolist() == [5, 7]


def test_loss_is_the_token_mean_over_answer_labels_left_or_right_padded(tiny):
    """sft_loss on the production (left-padded) batch == HF's own cross-entropy with hand-built labels, on the
    same two examples right-padded: padding side changes nothing, and only answer tokens count (12 of them)."""
    model, tok = tiny
    pairs = _examples(tok)
    with torch.no_grad():
        ours = sft_loss(answer_logprobs(model, collate_pairs(pairs, PAD)))
        width = max(len(p) for p in pairs)
        ids = torch.full((2, width), PAD)
        attention = torch.zeros((2, width), dtype=torch.long)
        labels = torch.full((2, width), -100)
        for row, p in enumerate(pairs):
            seq = p.prompt_ids + p.answer_ids
            ids[row, : len(seq)], attention[row, : len(seq)] = torch.tensor(seq), 1
            labels[row, len(p.prompt_ids) : len(seq)] = torch.tensor(p.answer_ids)
        assert int((labels != -100).sum()) == 12
        right = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        per_example = [
            model(
                input_ids=torch.tensor([p.prompt_ids + p.answer_ids]), labels=labels[r : r + 1, : len(p)]
            ).loss
            for r, p in enumerate(pairs)
        ]
    torch.testing.assert_close(ours, right, rtol=1e-5, atol=1e-5)
    # a token mean (5 + 7 tokens), not the mean of the two examples' means
    token_mean = (per_example[0] * 5 + per_example[1] * 7) / 12
    torch.testing.assert_close(ours, token_mean, rtol=1e-5, atol=1e-5)
