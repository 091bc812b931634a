"""Generative (IDGenRec) evaluation on Ray actors: 1 actor == 2 actors == the trainer's own in-process
constrained-beam-search ranking over the shards' test samples; every user exactly once; bad checkpoints.

The tiny checkpoint comes from test_zeroshot.build_tiny_run (trained once per pytest session).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from test_zeroshot import build_tiny_run

GEN = {"num_beams": 10, "top_k": 10, "batch_size": 16}
N_SAMPLE = 24


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_run(tmp_path_factory.getbasetemp() / "tiny_idgenrec_run")


@pytest.fixture(scope="module")
def ray_session():
    import ray
    from fusionrec.cluster.ray_local import RayConfig, init_ray

    init_ray(RayConfig(num_cpus=2))
    yield
    ray.shutdown()


def eval_cfg(num_actors: int, **kw):
    from fusionrec.cluster.evaluator import EvaluatorConfig
    from fusionrec.cluster.generative import EvaluateConfig, GenerativeEvalConfig

    gen = GenerativeEvalConfig(**GEN, max_users=N_SAMPLE, seed=3)
    ev = EvaluatorConfig(num_actors=num_actors, ks=(5, 10), unit_size=5, batch_size=5, progress=False)
    return EvaluateConfig(generative=gen, evaluator=ev, **kw)


@pytest.fixture(scope="module")
def two_actor_run(tiny_run, ray_session, tmp_path_factory):
    """`evaluate_checkpoint` with 2 actors on a seeded sample of the beauty test users."""
    from fusionrec.cluster.generative import evaluate_checkpoint

    out = tmp_path_factory.mktemp("eval") / "results"
    records = evaluate_checkpoint(tiny_run["checkpoint"], tiny_run["corpus"], eval_cfg(2), results_dir=out)
    return records, out


def _sampled(tiny_run):
    from fusionrec.cluster.generative import load_evalset, sample_users

    ds = tiny_run["corpus"] / "processed" / "beauty"
    return sample_users(load_evalset(ds, "test", "beauty"), N_SAMPLE, 3)[0], ds


@pytest.mark.integration
def test_one_actor_equals_two_actors_equals_trainer_reference(tiny_run, two_actor_run, ray_session, tmp_path):
    from fusionrec.cluster.evaluator import evaluate
    from fusionrec.cluster.generative import IDGenRecScorerFactory
    from fusionrec.data_pipeline.loader import LoaderConfig, ShardDataset
    from fusionrec.trainer.recipes.idgenrec.artefacts import RankingConfig, load_idgenrec_for_eval
    from fusionrec.trainer.recipes.idgenrec.artefacts import evaluate as trainer_evaluate

    records, _ = two_actor_run
    two = next(r for r in records if r["model"] == "idgenrec")
    data, ds = _sampled(tiny_run)
    factory = IDGenRecScorerFactory(str(tiny_run["checkpoint"]), str(ds), **GEN)
    one = evaluate(
        data, factory, eval_cfg(1).evaluator, scorer_desc=factory.describe(), results_dir=tmp_path / "u"
    )
    assert one.metrics == two["metrics"]  # bit-identical merge over actors
    assert one.users == two["users"] == N_SAMPLE and one.units == two["units"] == 5  # 4 x 5 + 4: no drop_last
    # Ground truth: the trainer's own ranking (IDGenRecCollator prompts + constrained_beam_search +
    # MetricSums over the checkpoint's full trie), fed the shards' test samples of the same users.
    model, tokenizer, table, trie = load_idgenrec_for_eval(tiny_run["checkpoint"])
    shard = ShardDataset(tiny_run["corpus"], LoaderConfig(splits=["test"], shuffle=False, even_batches=False))
    by_user = {s["user"]: s for s in shard if not s["_pad"]}
    samples = [by_user[u] for u in data.user_ids]
    assert [s["target"] for s in samples] == [data.item_ids[t] for t in data.targets]
    cfg = RankingConfig(num_beams=10, top_k=10, ks=[5, 10], batch_size=5)
    prompt = _prompt(tiny_run["checkpoint"])
    with torch.no_grad():
        reference = trainer_evaluate(model, tokenizer, table, trie, samples, cfg, prompt).to_dict()
    assert reference == one.metrics


def _prompt(checkpoint):
    from fusionrec.trainer.prompts import PromptConfig

    run = json.loads((Path(checkpoint).parent.parent / "config.json").read_text())
    return PromptConfig(**run["idgenrec"]["prompt"])


@pytest.mark.integration
def test_evaluate_checkpoint_writes_results_with_baseline_and_says_which_users(tiny_run, two_actor_run):
    from fusionrec.cluster.baselines import (
        MostPopularScorer,
        evaluate_in_process,
        fit_most_popular,
        load_corpus,
        train_sequences,
    )

    records, out = two_actor_run
    assert sorted(r["model"] for r in records) == ["idgenrec", "most_popular", "random (exact)"]
    from fusionrec.cluster.generative import load_evalset

    data, ds = _sampled(tiny_run)
    all_users = len(load_evalset(ds, "test"))
    assert all_users > N_SAMPLE
    for r in records:
        assert r["dataset"] == "beauty" and r["users"] == N_SAMPLE
        assert r["users_selection"] == {"selection": f"seeded sample of {N_SAMPLE}", "users": N_SAMPLE,
                                        "of": all_users, "seed": 3}  # fmt: skip
    # Most-popular through the actors equals a hand-fitted scorer on the training split (items[:-2]).
    seqs, vocab, _ = load_corpus(ds)
    counts = fit_most_popular(train_sequences(seqs, vocab), len(vocab))
    mp = next(r for r in records if r["model"] == "most_popular")
    assert mp["metrics"] == evaluate_in_process(MostPopularScorer(counts, 10), data, (5, 10)).to_dict()
    # Per-user ranks (for paired comparisons) agree with the merged metrics, in the EvalSet's user order.
    for r in (x for x in records if "ranks" in x):
        ranks = np.asarray(r["ranks"])
        assert len(ranks) == N_SAMPLE and r["metrics"]["HR@10"] == pytest.approx(
            ((ranks >= 0) & (ranks < 10)).mean()
        )
    ranks_mp = np.asarray(mp["ranks"])
    top = np.argsort(-counts, kind="stable")[:10]
    assert [int(np.nonzero(top == t)[0][0]) if t in top else -1 for t in data.targets] == ranks_mp.tolist()
    rand = next(r for r in records if r["model"] == "random (exact)")
    assert rand["metrics"]["HR@10"] == pytest.approx(10 / len(vocab)) and rand["exact"]
    doc = json.loads((out / "beauty.json").read_text())
    assert doc["complete"] and [r["model"] for r in doc["results"]] == [r["model"] for r in records]
    md = (out / "results.md").read_text()
    assert "| idgenrec | beauty |" in md and "| most_popular | beauty |" in md
    assert (out / "results.csv").read_text().count("\n") == 4
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.integration
def test_exclude_history_never_recommends_a_history_item(tiny_run):
    from fusionrec.cluster.evaluator import UserBatch
    from fusionrec.cluster.generative import IDGenRecScorerFactory

    data, ds = _sampled(tiny_run)
    scorer = IDGenRecScorerFactory(str(tiny_run["checkpoint"]), str(ds), **GEN, exclude_history=True)()
    users = range(6)
    top = scorer.rank(UserBatch([data.user_ids[i] for i in users], [data.history(i) for i in users]))
    assert top.shape == (6, 10)
    for row, i in zip(top, users, strict=True):
        found = row[row >= 0]
        assert len(set(found.tolist())) == len(found) and not np.isin(found, data.history(i)).any()


@pytest.mark.integration
def test_item_missing_from_the_id_table_is_named(tiny_run):
    from fusionrec.cluster.generative import IDGenRecScorerFactory
    from fusionrec.trainer.idgen.id_table import IDTable
    from fusionrec.trainer.recipes.idgenrec.artefacts import load_idgenrec_for_eval

    _, _, table, _ = load_idgenrec_for_eval(tiny_run["checkpoint"])
    ids = table.as_dict()
    dropped = sorted(ids)[4]
    del ids[dropped]
    ds = tiny_run["corpus"] / "processed" / "beauty"
    factory = IDGenRecScorerFactory(str(tiny_run["checkpoint"]), str(ds), **GEN, id_source="generate",
                                    id_table=IDTable(ids, "generative"))  # fmt: skip
    with pytest.raises(
        ValueError, match=rf"1 of {len(table)} evaluated items have no textual ID .*'{dropped}'"
    ):
        factory()


@pytest.mark.integration
def test_checkpoint_without_its_id_table_is_refused(tiny_run, tmp_path):
    from fusionrec.cluster.generative import IDGenRecScorerFactory, evaluate_checkpoint
    from fusionrec.trainer.checkpoint import MARKER, TRAINER_STATE

    run = tmp_path / "run"
    shutil.copytree(Path(tiny_run["checkpoint"]).parent.parent, run)
    ckpt = run / "checkpoints" / Path(tiny_run["checkpoint"]).name
    state = torch.load(ckpt / TRAINER_STATE, weights_only=True)
    del state["module"]["table"]
    torch.save(state, ckpt / TRAINER_STATE)
    marker = json.loads((ckpt / MARKER).read_text())  # keep the checkpoint otherwise intact (sizes, hashes)
    marker["files"][TRAINER_STATE] = {"bytes": (ckpt / TRAINER_STATE).stat().st_size,
                                      "sha256": hashlib.sha256((ckpt / TRAINER_STATE).read_bytes()).hexdigest()}  # fmt: skip
    (ckpt / MARKER).write_text(json.dumps(marker))
    with pytest.raises(ValueError, match=r"has no ID table"):
        IDGenRecScorerFactory(str(ckpt), str(tiny_run["corpus"] / "processed" / "beauty"), **GEN)()
    with pytest.raises(ValueError, match=r"has no ID table"):
        evaluate_checkpoint(ckpt, tiny_run["corpus"], eval_cfg(1))
    assert not (run / "eval").exists()  # nothing written, no actor started
    from fusionrec.trainer.recipes.idgenrec.artefacts import export_idgenrec, load_idgenrec_for_eval

    with pytest.raises(ValueError, match=r"has no ID table"):  # the trainer's loaders share the check
        load_idgenrec_for_eval(ckpt)
    with pytest.raises(ValueError, match=r"has no ID table"):
        export_idgenrec(ckpt, tmp_path / "export")
    assert not (tmp_path / "export").exists()


@pytest.mark.unit
def test_seeded_user_sample_is_reproducible_and_ordered():
    from fusionrec.cluster.evaluator import EvalSet
    from fusionrec.cluster.generative import sample_users

    seqs = pa.table({"user_id": [f"u{i}" for i in range(10)],
                     "item_ids": [[f"i{i}", f"i{i + 1}", f"i{i + 2}"] for i in range(10)]})  # fmt: skip
    data = EvalSet.from_sequences(seqs, "test", "t", [f"i{i}" for i in range(12)])
    a, info = sample_users(data, 4, seed=7)
    b, _ = sample_users(data, 4, seed=7)
    assert (
        a.user_ids == b.user_ids and len(a) == 4 and a.user_ids == sorted(a.user_ids, key=data.user_ids.index)
    )
    assert info == {"selection": "seeded sample of 4", "users": 4, "of": 10, "seed": 7}
    for k, u in enumerate(a.user_ids):
        j = data.user_ids.index(u)
        assert a.history(k).tolist() == data.history(j).tolist() and a.targets[k] == data.targets[j]
    same, info = sample_users(data, 0, seed=7)
    assert same is data and info == {"selection": "all", "users": 10, "of": 10}


@pytest.mark.unit
def test_factory_and_config_validation():
    from fusionrec.cluster.generative import EvaluateConfig, GenerativeEvalConfig, IDGenRecScorerFactory

    with pytest.raises(ValueError, match="id_source"):
        IDGenRecScorerFactory("c", "d", id_source="random")
    with pytest.raises(ValueError, match="needs id_table"):
        IDGenRecScorerFactory("c", "d", id_source="generate")
    with pytest.raises(ValueError, match="top_k"):
        GenerativeEvalConfig(num_beams=5, top_k=10)
    with pytest.raises(ValueError, match="needs top_k >= 20"):
        EvaluateConfig(generative=GenerativeEvalConfig(num_beams=10, top_k=10))
    with pytest.raises(ValueError, match="eval.device"):
        IDGenRecScorerFactory("c", "d", device="tpu")
    # the device joins the run fingerprint only off the CPU: CPU result folders written before stay valid
    assert "device" not in _described_fields("cpu")
    assert _described_fields("cuda")["device"] == "cuda"


def _described_fields(device: str) -> dict:
    from fusionrec.cluster.generative import IDGenRecScorerFactory, scorer_fields

    return scorer_fields(IDGenRecScorerFactory("c", "d", device=device))


@pytest.mark.integration
def test_in_process_evaluation_without_ray_equals_the_actors(tiny_run, two_actor_run, tmp_path, monkeypatch):
    """num_actors = 0: `evaluate_checkpoint` scores in this process (a GPU image without Ray), the same records."""
    from fusionrec.cluster.generative import evaluate_checkpoint

    records, _ = two_actor_run
    monkeypatch.setitem(sys.modules, "ray", None)  # any `import ray` now fails
    local = evaluate_checkpoint(
        tiny_run["checkpoint"], tiny_run["corpus"], eval_cfg(0), results_dir=tmp_path / "r"
    )
    assert [(r["model"], r["metrics"]) for r in local] == [(r["model"], r["metrics"]) for r in records]


@pytest.mark.gpu
def test_scorer_on_cuda_gives_the_cpus_top_k(tiny_run):
    from fusionrec.cluster.evaluator import UserBatch
    from fusionrec.cluster.generative import IDGenRecScorerFactory

    torch.backends.cuda.matmul.allow_tf32 = False
    data, ds = _sampled(tiny_run)
    batch = UserBatch(data.user_ids, [data.history(i) for i in range(len(data))])
    cpu = IDGenRecScorerFactory(str(tiny_run["checkpoint"]), str(ds), **GEN)().rank(batch)
    gpu = IDGenRecScorerFactory(str(tiny_run["checkpoint"]), str(ds), **GEN, device="cuda")().rank(batch)
    assert (cpu == gpu).all()


@pytest.mark.integration
def test_scorer_prompts_follow_the_runs_prompt_style(tiny_run):
    """A run trained with terse prompts is evaluated with terse prompts (the scorer once always used P5)."""
    from fusionrec.cluster.generative import GenerativeEvalConfig, IDGenRecScorer
    from fusionrec.trainer.prompts import PromptConfig, build_prompt
    from fusionrec.trainer.recipes.idgenrec.artefacts import load_idgenrec_for_eval

    model, tok, table, _ = load_idgenrec_for_eval(tiny_run["checkpoint"])
    items = sorted(table)
    hist = np.asarray([0, 3, 5])
    for style in ("p5", "terse"):
        prompt = PromptConfig(style=style, eval_template=0)
        scorer = IDGenRecScorer(model, tok, table, items, prompt, GenerativeEvalConfig(**GEN))
        ids, mask = scorer.encode([hist])
        text = build_prompt([table[items[i]] for i in hist], 0, style=style).text
        assert ids[0, : int(mask[0].sum())].tolist() == tok(text)["input_ids"]
    assert build_prompt(["a"], 0, style="terse").text != build_prompt(["a"], 0).text  # styles differ
