"""Prompt templates: 10 templates, seeded sampling, fixed eval template, history cap, exact ID positions."""

from __future__ import annotations

from collections import Counter

import pytest
from fusionrec.trainer.models.tokenizer import load_tokenizer, train_tokenizer
from fusionrec.trainer.prompts import (
    TEMPLATES,
    PromptBuilder,
    PromptConfig,
    build_prompt,
    cap_history,
    choose_template,
    token_positions,
)

IDS = ["red soft cream", "blue shampoo", "green tea lotion 8", "silk"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    corpus = [" ".join(IDS) + " " + t.replace("{user}", "alice").replace("{history}", "x") for t in TEMPLATES]
    return train_tokenizer(corpus * 20, tmp_path_factory.mktemp("tok") / "t", vocab_size=150)


@pytest.mark.unit
def test_ten_templates_no_dataset_name():
    assert len(TEMPLATES) == 10 and len(set(TEMPLATES)) == 10
    for t in TEMPLATES:
        assert t.count("{history}") == 1 and t.count("{user}") == 1 and "dataset" not in t


@pytest.mark.unit
@pytest.mark.parametrize("template", range(10))
@pytest.mark.parametrize("user", [None, "night owl"])
def test_spans_are_exact(template, user):
    p = build_prompt(IDS, template, user)
    assert [p.text[s:e] for s, e in p.item_spans] == IDS
    assert "{" not in p.text and "  " not in p.text
    if user is None:
        assert p.user_span is None and "user {" not in p.text and " the user" in p.text.lower()
    else:
        assert p.text[slice(*p.user_span)] == user


@pytest.mark.unit
def test_history_cap_keeps_most_recent():
    hist = [f"i{k}" for k in range(30)]
    assert cap_history(hist, 20) == hist[10:]
    assert cap_history(hist[:5], 20) == hist[:5]


@pytest.mark.unit
def test_template_sampling_seeded_and_covering():
    picks = [choose_template(0, f"u{k}") for k in range(2000)]
    assert picks == [choose_template(0, f"u{k}") for k in range(2000)]  # deterministic
    counts = Counter(picks)
    assert set(counts) == set(range(10)) and min(counts.values()) > 150  # roughly uniform (expected 200)
    assert picks != [choose_template(1, f"u{k}") for k in range(2000)]  # the seed matters
    assert picks != [choose_template(0, f"u{k}", epoch=1) for k in range(2000)]  # a fresh draw each epoch


@pytest.mark.unit
def test_builder_train_vs_eval_and_caps():
    table = {f"i{k}": f"item number {k}" for k in range(30)}
    builder = PromptBuilder(PromptConfig(max_history=20, eval_template=3), table)
    sample = {
        "dataset": "beauty",
        "user": "u1",
        "split": "train",
        "history": [f"i{k}" for k in range(25)],
        "target": "i29",
    }
    prompt, target = builder.build(sample, train=False)
    assert prompt.template == 3 and target == "item number 29"
    assert [prompt.text[s:e] for s, e in prompt.item_spans] == [f"item number {k}" for k in range(5, 25)]
    templates = {builder.build(dict(sample, user=f"u{k}"), train=True)[0].template for k in range(100)}
    assert len(templates) == 10


@pytest.mark.unit
def test_builder_bad_input():
    builder = PromptBuilder(PromptConfig(), {"a": "x"})
    with pytest.raises(ValueError, match="item 'b'"):
        builder.build({"user": "u", "history": ["a", "b"], "target": "a"}, train=False)
    with pytest.raises(ValueError, match="user ID table"):
        PromptBuilder(PromptConfig(use_user_id=True), {"a": "x"})
    with pytest.raises(ValueError, match="at least one"):
        build_prompt([], 0)
    with pytest.raises(ValueError, match="template"):
        build_prompt(["x"], 10)
    with pytest.raises(ValueError, match="max_history"):
        PromptConfig(max_history=0)


def _check_token_positions(tok, user):
    for template in range(10):
        p = build_prompt(IDS, template, user)
        ids, positions = token_positions(tok, p)
        flat = [t for pos in positions for t in pos]
        assert len(flat) == len(set(flat))  # an ID token belongs to one item only
        for k, pos in enumerate(positions):
            assert pos == list(range(pos[0], pos[-1] + 1))  # contiguous
            assert tok.decode([ids[t] for t in pos], skip_special_tokens=True).strip() == IDS[k]


@pytest.mark.unit
@pytest.mark.parametrize("user", [None, "night owl"])
def test_token_positions_decode_to_each_id(tok, user):
    _check_token_positions(tok, user)


@pytest.mark.slow
def test_token_positions_real_t5_tokenizer(t5_tokenizer_dir):
    _check_token_positions(load_tokenizer(t5_tokenizer_dir), "night owl")


@pytest.mark.unit
def test_terse_style_one_short_template_with_exact_positions(tok):
    cfg = PromptConfig(style="terse")
    builder = PromptBuilder(cfg, {f"i{k}": t for k, t in enumerate(IDS)})
    sample = {"user": "u", "history": ["i0", "i1", "i2", "i3"], "target": "i0"}
    prompts = {builder.build(sample, train=True, epoch=e)[0].text for e in range(5)}
    assert prompts == {"The user : " + " , ".join(IDS)}  # one template, train and eval alike
    p = build_prompt(IDS, 0, style="terse")
    ids, positions = token_positions(tok, p)
    for k, pos in enumerate(positions):
        assert tok.decode([ids[t] for t in pos], skip_special_tokens=True).strip() == IDS[k]
    full = build_prompt(IDS, cfg.eval_template)
    assert len(ids) < len(tok(full.text)["input_ids"]) - 8  # the wording costs a few tokens, not ~20
    with pytest.raises(ValueError, match="style"):
        PromptConfig(style="short")
    with pytest.raises(ValueError, match="eval_template must be in \\[0, 1\\) for style 'terse'"):
        PromptConfig(style="terse", eval_template=3)
