"""IDGenRec user IDs (``idgenrec.prompt.use_user_id``): the no-leakage rule on a constructed example, the
user ID's exact place in the prompt (hard tokens, outside every soft ID position), config/lookup errors, and
a 2-process DeepSpeed run that trains, regenerates, checkpoints and resumes with the same user table, then
is evaluated from the checkpoint (module ``evaluate`` and the Ray scorer's prompt encoding).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fusionrec.trainer.idgen.generator import IDGenConfig
from fusionrec.trainer.idgen.user_ids import (
    UserIDTable,
    generate_user_table,
    profile_windows,
    title_profile,
    title_user_table,
    user_histories,
)
from fusionrec.trainer.models.seq2seq import ModelConfig, build_seq2seq
from fusionrec.trainer.models.tokenizer import TokenizerConfig, load_tokenizer
from fusionrec.trainer.prompts import STYLES, PromptBuilder, PromptConfig, user_key
from fusionrec.trainer.recipes.idgenrec.config import IDGenRecConfig
from fusionrec.trainer.recipes.idgenrec.data import (
    IDGenRecCollator,
    all_samples,
    encodable_fn,
    id_tokens,
    load_items,
)
from fusionrec.trainer.recipes.idgenrec.module import IDGenRecModule
from test_idgenrec import TINY, fit_idgenrec, make_corpus, make_tokenizer, tiny_config

IDGEN = IDGenConfig(num_groups=4, lambda_max=3.0, max_windows=1)
USER = "u3"  # 8 items: train targets at positions 1..5, valid at 6, test at 7


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("userid") / "corpus")


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory):
    return load_tokenizer(make_tokenizer(corpus, tmp_path_factory.mktemp("tok") / "t"))


def _user_samples(corpus: Path, user: str) -> tuple[list[str], list[dict]]:
    """(the user's full sequence, its samples), the sequence rebuilt from the test sample."""
    samples = [s for s in all_samples(corpus) if s["user"] == user]
    test = next(s for s in samples if s["split"] == "test")
    return [*test["history"], test["target"]], samples


# ---------------------------------------------------------------------- leakage
@pytest.mark.unit
def test_no_user_id_is_built_from_the_samples_target_or_later_items(corpus, tokenizer):
    texts, titles = load_items(corpus)
    encodable = encodable_fn(tokenizer)
    model = build_seq2seq(ModelConfig(seed=1, **TINY), tokenizer=tokenizer)
    seq, samples = _user_samples(corpus, USER)
    assert len(seq) == 8 and {s["split"] for s in samples} == {"train", "valid", "test"}
    full = user_histories(samples)
    full_t = title_user_table(full, titles, 3, encodable)
    full_g = generate_user_table(model, tokenizer, full, texts, titles, IDGEN, 3)
    for t in range(1, len(seq)):
        # The constructed example: items seq[t:] (the target at position t and every later item) do not
        # exist for the samples whose target is at or before t. A rule reading them raises KeyError.
        hidden = set(seq[t:])
        before = [s for s in samples if seq.index(s["target"]) <= t]
        assert {seq.index(s["target"]) for s in before} == set(range(1, t + 1))
        cut = {i: v for i, v in texts.items() if i not in hidden}
        cut_titles = {i: v for i, v in titles.items() if i not in hidden}
        histories = user_histories(before)
        assert title_user_table(histories, cut_titles, 3, encodable).as_dict() == {
            k: full_t[k] for k in histories
        }
        generated = generate_user_table(model, tokenizer, histories, cut, cut_titles, IDGEN, 3)
        assert generated.as_dict() == {k: full_g[k] for k in histories}
    # The split rule in particular: valid profile = items[:-2], test profile = items[:-1].
    valid = next(s for s in samples if s["split"] == "valid")
    test = next(s for s in samples if s["split"] == "test")
    assert full[user_key(USER, valid["history"])] == tuple(seq[:-2])
    assert full[user_key(USER, test["history"])] == tuple(seq[:-1])
    # Positive control (the check above can fail): a title rule that did read the target would show it.
    poisoned = dict(titles, **{valid["target"]: "zzleak " * 10})
    assert "zzleak" in title_profile(seq[:-1], poisoned, 3, encodable)  # the test sample's history has it
    assert "zzleak" not in title_profile(full[user_key(USER, valid["history"])], poisoned, 3, encodable)


@pytest.mark.unit
def test_windows_stop_at_the_token_budget_and_title_ids_rank_words_by_frequency():
    counts = {"a": 5, "b": 5, "c": 5, "d": 5}
    histories = user_histories([{"user": "u", "history": ["a", "b", "c", "d"], "target": "x"}])
    assert profile_windows(histories, counts, 11) == {"u\td": ("a", "b")}  # 5 + (1 + 5) = 11 tokens
    assert profile_windows(histories, counts, 100) == {"u\td": ("a", "b", "c", "d")}
    titles = {"a": "Red Lipstick 2 pack", "b": "red brush and mirror", "c": "Mirror, red"}
    assert title_profile(["a", "b", "c"], titles, 3, lambda w: True) == "red mirror lipstick"
    assert title_profile(["a"], {"a": "an 12 of"}, 3, lambda w: True) == "user"


# ---------------------------------------------------------------------- prompt placement
@pytest.mark.unit
def test_prompt_holds_the_user_id_at_its_place_as_hard_tokens(corpus, tokenizer):
    texts, titles = load_items(corpus)
    _, samples = _user_samples(corpus, USER)
    users = title_user_table(user_histories(samples), titles, 3, encodable_fn(tokenizer))
    items = {i: " ".join(t.split()[:2]) + f" {k}" for k, (i, t) in enumerate(titles.items())}
    sample = next(s for s in samples if s["split"] == "valid")
    uid = users[user_key(USER, sample["history"])]
    builder = PromptBuilder(PromptConfig(use_user_id=True, eval_template=2), items, users.as_dict())
    prompt, _ = builder.build(sample, train=False)
    history = " , ".join(items[i] for i in sample["history"])
    assert (
        prompt.text
        == f"User {uid} has purchased items {history} , predict the next possible item to be bought by the user ."
    )
    for style, templates in STYLES.items():
        for t in range(len(templates)):
            cfg = PromptConfig(use_user_id=True, eval_template=t, style=style)
            p, _ = PromptBuilder(cfg, items, users.as_dict()).build(sample, train=False)
            assert p.text[slice(*p.user_span)] == uid and f"user {uid} " in p.text.lower()
    # ID phase: the user's tokens are exactly the ID's tokens and no soft position touches them.
    from fusionrec.trainer.idgen.id_table import IDTable

    table = IDTable(items, "generative")
    collate = IDGenRecCollator("id", tokenizer, builder, id_tokens(table, tokenizer), "v", texts=texts)
    batch = collate([dict(sample)])
    train_prompt, _ = builder.build(sample, train=True)  # the collator's (sampled) training template
    enc = tokenizer(train_prompt.text, return_offsets_mapping=True)
    s, e = train_prompt.user_span
    user_pos = [k for k, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < e and b > s]
    assert tokenizer.decode([enc["input_ids"][k] for k in user_pos]).strip() == uid
    soft = set(batch["soft_index"][:, 1].tolist())
    assert soft and not soft & set(user_pos)
    assert batch["input_ids"][0, : len(enc["input_ids"])].tolist() == enc["input_ids"]


@pytest.mark.unit
def test_errors_name_the_field_or_the_user(corpus, tmp_path):
    with pytest.raises(ValueError, match="idgenrec.user_title_words"):
        IDGenRecConfig(user_title_words=0)
    builder = PromptBuilder(PromptConfig(use_user_id=True), {"a": "x", "b": "y"}, {"u\tb": "night owl"})
    assert builder.build({"user": "u", "history": ["a", "b"], "target": "a"}, train=False)[0].user_span
    with pytest.raises(ValueError, match="user 'v' \\(last history item 'b'\\)"):
        builder.build({"user": "v", "history": ["a", "b"], "target": "a"}, train=False)
    with pytest.raises(ValueError, match="empty"):
        UserIDTable({"u\ta": " "}, "title")
    table = UserIDTable({"u\ta": "night owl"}, "title", 0)
    state = dict(table.to_state(), ids={"u\ta": "day owl"})
    with pytest.raises(ValueError, match="hash"):
        UserIDTable.from_state(state)
    assert UserIDTable.load(table.save(tmp_path / "u.json")).hash == table.hash
    # Resuming a user-ID checkpoint without the setting (or the reverse) names the setting.
    module = IDGenRecModule(tiny_config(str(corpus)), tmp_path)
    with pytest.raises(ValueError, match="idgenrec.prompt.use_user_id = false"):
        module.load_state_dict({"user_table": table.to_state()})


# ---------------------------------------------------------------------- 2 processes: train, checkpoint, resume
SCHEDULE = dict(rounds=1, id_steps=2, rec_steps=2)  # id: steps 1-2 (then regeneration), rec: 3-4
TOTAL, STOP_AT = 4, 3


def _worker(corpus: str, tokenizer: str, run_dir: str) -> dict:
    prompt = PromptConfig(use_user_id=True)
    cfg = tiny_config(corpus, tokenizer=TokenizerConfig(path=tokenizer), prompt=prompt, **SCHEDULE)

    def fit(sub: str, max_steps: int, resume: str | None):
        return fit_idgenrec(cfg, f"{run_dir}/{sub}", max_steps, resume)

    module, losses = fit("full", TOTAL, None)
    local = module.local_model("id_generator")
    regenerated = generate_user_table(local, module.tokenizer, module.user_histories(),
                                      module.texts, module.titles, cfg.idgen, cfg.user_title_words, round=1)  # fmt: skip
    sample = next(s for s in module.split_dataset("valid", even_batches=False) if not s["_pad"])
    collate = module.collator("eval", module.train_data)
    out = {
        "losses": losses,
        "user_history": module.user_history,
        "user_hash": module.user_table.hash,
        "user_kind": module.user_table.kind,
        "regenerated_hash": regenerated.hash,
        "collate_version": collate.version,
        "prompt_text": module.tokenizer.decode(
            collate([dict(sample)])["input_ids"][0], skip_special_tokens=True
        ),
        "sample_user_id": module.user_table[user_key(sample["user"], sample["history"])],
        "metrics": module.evaluate_split("valid"),
        "stats": module.user_table.stats,
    }
    half, half_losses = fit("resumed", STOP_AT, None)
    out["stopped_user_history"] = half.user_history
    resumed, rlosses = fit("resumed", TOTAL, "auto")
    out["resumed_losses"], out["resumed_user_hash"] = rlosses, resumed.user_table.hash
    out["resumed_user_history"] = resumed.user_history
    return out


@pytest.mark.distributed
def test_user_ids_train_checkpoint_resume_and_evaluate_two_processes(tmp_path: Path) -> None:
    from fusionrec.cluster.generative import GenerativeEvalConfig, IDGenRecScorer, IDGenRecScorerFactory
    from fusionrec.cluster.heldout_ids import generate_dataset_table
    from fusionrec.data_pipeline.loader import LoaderConfig, ShardDataset
    from fusionrec.trainer.checkpoint import list_checkpoints
    from fusionrec.trainer.recipes.idgenrec.artefacts import (
        evaluate,
        export_idgenrec,
        load_idgenrec_for_eval,
        load_user_table,
    )
    from fusionrec.trainer.testing import run_distributed_test

    corpus = make_corpus(tmp_path / "corpus")
    tok = make_tokenizer(corpus, tmp_path / "tokenizer")
    r0, r1 = run_distributed_test(_worker, world_size=2, timeout_s=300, corpus=str(corpus), tokenizer=str(tok),
                                  run_dir=str(tmp_path))  # fmt: skip
    assert r0["user_history"] == r1["user_history"] and r0["user_hash"] == r1["user_hash"]
    assert r0["losses"] == r1["losses"] and sorted(r0["losses"]) == [1, 2, 3, 4]
    # Title user IDs at round 0, regenerated by the ID generator after the ID phase (round 1).
    assert [v.split("-")[0] for v in r0["user_history"]] == ["u0", "u1"] and r0["user_kind"] == "generator"
    assert r0["user_hash"] == r0["regenerated_hash"]
    assert r0["stats"]["entries"] == 264 and r0["stats"]["users"] == 48  # every sample of every split
    assert r0["collate_version"].endswith("+" + r0["user_history"][-1])
    assert f"user {r0['sample_user_id']} " in r0["prompt_text"].lower()
    # Both tables are saved beside the item tables.
    for version in r0["user_history"]:
        path = tmp_path / "full" / "id_tables" / f"users-{version}.json"
        assert UserIDTable.load(path).version == version
    # Stopped after the regeneration, resumed from its checkpoint: same user table, same losses.
    assert r0["stopped_user_history"] == r0["user_history"]
    assert r0["resumed_user_hash"] == r0["user_hash"]
    assert r0["resumed_losses"] == {4: pytest.approx(r0["losses"][4], rel=1e-5)}
    # Evaluation from the checkpoint in this process: the checkpoint's user table, same metrics.
    ckpt = list_checkpoints(tmp_path / "full" / "checkpoints")[-1][1]
    model, tokenizer, table, trie = load_idgenrec_for_eval(ckpt)
    users = load_user_table(ckpt)
    assert users.hash == r0["user_hash"]
    cfg = tiny_config(str(corpus), prompt=PromptConfig(use_user_id=True))
    valid = list(ShardDataset(corpus, LoaderConfig(splits=["valid"], shuffle=False, even_batches=False)))
    with torch.no_grad():
        sums = evaluate(model, tokenizer, table, trie, valid, cfg.eval, cfg.prompt, users=users)
    assert sums.to_dict() == pytest.approx(r0["metrics"]) and sums.to_dict()["count"] == 48
    # The Ray scorer's prompt (built from EvalSet indices) carries the same user ID as the collator's.
    items = list(table)
    scorer = IDGenRecScorer(model, tokenizer, table, items, cfg.prompt, GenerativeEvalConfig(), users)
    sample = valid[0]
    ids, _ = scorer.encode(
        [torch.tensor([items.index(i) for i in sample["history"]]).numpy()], [sample["user"]]
    )
    uid = users[user_key(sample["user"], sample["history"])]
    assert f"user {uid} " in tokenizer.decode(ids[0], skip_special_tokens=True).lower()
    with pytest.raises(ValueError, match="user ID table"):
        IDGenRecScorer(model, tokenizer, table, items, cfg.prompt, GenerativeEvalConfig())
    # The actor's factory reads the run's prompt section (RUN/config.json, written by `fusionrec train`) and
    # loads the checkpoint's user table; zero-shot (IDs for unseen items) refuses such a run on the driver.
    (tmp_path / "full" / "config.json").write_text(
        json.dumps({"idgenrec": {"prompt": {"use_user_id": True}}})
    )
    assert IDGenRecScorerFactory(str(ckpt), str(corpus))().users.hash == users.hash
    with pytest.raises(ValueError, match="zero-shot"):
        generate_dataset_table(ckpt, corpus)
    with pytest.raises(ValueError, match="zero-shot"):
        IDGenRecScorerFactory(str(ckpt), str(corpus), id_source="generate", id_table=table)()
    # Export carries the user table beside the item table.
    written = export_idgenrec(ckpt, tmp_path / "export")
    assert UserIDTable.load(written["user_id_table"]).hash == users.hash
