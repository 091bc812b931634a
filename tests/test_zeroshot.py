"""Zero-shot harness: synthetic multi-platform corpus (Amazon Beauty pretraining; Amazon Sports and Yelp held
out) → tiny IDGenRec trained by the real CLI → IDs for unseen items by the scheme it was trained on → Ray
actors → tables.

`build_tiny_run` is shared with test_generative_eval.py: it builds into the pytest session's base temp dir
once, so a session running both files trains one checkpoint. Its recommender ends on a table made by its
(barely trained, junk-emitting) ID generator, so the harness refuses its held-out tables by default: the
shared run is evaluated with ``id_quality = "warn"``; `title_run` trains the same model on fixed title IDs
(``order = ["rec"]``), whose held-out title tables pass.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# Cheap Algorithm 1 (one length window of 6 tokens, 3 diversity strengths): used by training's table
# regeneration and, from the run's config, by the zero-shot ID generation.
TRAIN_OVERRIDES = [
    "idgenrec.warmup_steps=2", "idgenrec.rounds=1", "idgenrec.id_steps=2", "idgenrec.rec_steps=10",
    "idgenrec.tokenizer.vocab_size=1000", "idgenrec.eval.max_users=8", "idgenrec.idgen.window=6",
    "idgenrec.idgen.max_windows=1", "idgenrec.idgen.lambda_max=3.0", "train.optim.warmup_steps=2",
    "train.checkpoint.every_steps=0", "train.tensorboard=false", "train.progress=false",
]  # fmt: skip
ZS_DATASETS = ["sports", "yelp"]


def _spec(name: str, fmt: str, raw: Path, category: str | None, platform: str):
    """A DatasetSpec declaring its platform (when this data_pipeline knows the field)."""
    import dataclasses

    from fusionrec.data_pipeline.config import DatasetSpec

    extra = {"platform": platform} if "platform" in {f.name for f in dataclasses.fields(DatasetSpec)} else {}
    return DatasetSpec(name, fmt, str(raw), category, **extra)


def build_tiny_run(
    base: Path, overrides: tuple[str, ...] = (), corpus: Path | None = None
) -> dict[str, Path]:
    """Synthetic raw data → prepared Fusion corpus (pretrain beauty; zero-shot sports + yelp; each declaring
    its platform) → a tiny IDGenRec trained for a few steps with `fusionrec train idgenrec` (1 DeepSpeed
    rank), with extra `overrides`; `corpus` = an already prepared corpus to train on. Cached in `base`."""
    from fusionrec.data_pipeline.config import DataConfig, FusionConfig, ShardConfig
    from fusionrec.data_pipeline.prepare import prepare
    from fusionrec.data_pipeline.synth import synth
    from fusionrec.trainer.checkpoint import list_checkpoints

    paths = {"corpus": corpus or base / "corpus", "run": base / "run"}
    ready = base / "READY"
    if ready.exists():
        return {**paths, "checkpoint": Path(ready.read_text())}
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    if corpus is None:
        raw = base / "raw"
        synth(raw, categories=("Beauty", "Sports"), users_per_category=40, items_per_category=30,
              yelp=True, yelp_users=40, yelp_items=30)  # fmt: skip
        specs = [_spec("beauty", "amazon2014", raw, "Beauty", "amazon"),
                 _spec("sports", "amazon2014", raw, "Sports", "amazon"), _spec("yelp", "yelp", raw, None, "yelp")]  # fmt: skip
        cfg = DataConfig(datasets=specs, kcore=3, max_history=20,
                         fusion=FusionConfig(pretrain=["beauty"], zeroshot=ZS_DATASETS),
                         shards=ShardConfig(engine="local", samples_per_shard=2000))  # fmt: skip
        prepare(cfg, paths["corpus"])
    cmd = [sys.executable, "-m", "fusionrec.launch.cli", "train", "idgenrec", "--config", "idgenrec_tiny",
           "--nproc", "1", f"corpus={paths['corpus']}", f"train.run_dir={paths['run']}", *TRAIN_OVERRIDES,
           *overrides]  # fmt: skip
    # A clean child env: in-process tests that ran earlier in this pytest process set RANK/WORLD_SIZE/MASTER_*
    # (a 1-rank process group); inherited, they would make the child think it is a rank of *that* group.
    dist_vars = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in dist_vars}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = list_checkpoints(paths["run"] / "checkpoints")[-1][1]
    ready.write_text(str(ckpt))
    return {**paths, "checkpoint": ckpt}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_run(tmp_path_factory.getbasetemp() / "tiny_idgenrec_run")


@pytest.fixture(scope="module")
def title_run(tiny_run, tmp_path_factory) -> dict[str, Path]:
    """The same tiny model trained on fixed title IDs only (the recommender alone, no ID phase)."""
    base = tmp_path_factory.getbasetemp() / "tiny_idgenrec_title_run"
    return build_tiny_run(base, ('idgenrec.order=["rec"]',), corpus=tiny_run["corpus"])


@pytest.fixture(scope="module")
def ray_session():
    import ray
    from fusionrec.cluster.ray_local import RayConfig, init_ray

    init_ray(RayConfig(num_cpus=2))
    yield
    ray.shutdown()


def small_cfg(max_users: int = 0, seed: int = 0, **kw):
    from fusionrec.cluster.evaluator import EvaluatorConfig
    from fusionrec.cluster.generative import GenerativeEvalConfig
    from fusionrec.cluster.zeroshot import ZeroShotConfig

    gen = GenerativeEvalConfig(num_beams=10, top_k=10, batch_size=32, max_users=max_users, seed=seed)
    ev = EvaluatorConfig(num_actors=1, ks=(5, 10), unit_size=64, batch_size=64, progress=False)
    return ZeroShotConfig(generative=gen, evaluator=ev, **kw)


@pytest.fixture(scope="module")
def zeroshot_run(tiny_run, ray_session, tmp_path_factory):
    from fusionrec.cluster.zeroshot import run_zeroshot

    out = tmp_path_factory.mktemp("zs") / "results"
    t0 = time.perf_counter()
    cfg = small_cfg(id_quality="warn")  # the junk generator's tables are scored, flagged (see the docstring)
    records = run_zeroshot(tiny_run["checkpoint"], tiny_run["corpus"], cfg=cfg, results_dir=out)
    return records, out, time.perf_counter() - t0


@pytest.mark.integration
def test_every_heldout_dataset_evaluated_on_all_its_test_users(tiny_run, zeroshot_run):
    from fusionrec.cluster.generative import load_evalset
    from fusionrec.trainer.idgen.id_table import IDTable

    records, out, _ = zeroshot_run
    corpus = tiny_run["corpus"]
    assert [r["dataset"] for r in records] == ZS_DATASETS
    for rec in records:
        name = rec["dataset"]
        manifest = json.loads((corpus / "zeroshot" / name / "manifest.json").read_text())
        test_users = manifest["datasets"][name]["samples"]["test"]
        data = load_evalset(corpus / "zeroshot" / name / "processed" / name, "test", name)
        assert rec["users"] == test_users == len(data) > 0
        assert rec["users_selection"] == {"selection": "all", "users": test_users, "of": test_users}
        assert rec["metrics"]["count"] == test_users
        # The recommender ended on a generator table, so the unseen items' IDs came from the trained
        # generator (Algorithm 1), saved with the results with their quality diagnostics.
        assert rec["id_scheme"]["scheme"] == "generator" and rec["id_table"]["method"] == "generator"
        table = IDTable.load(out / "id_tables" / f"{name}.json")
        items = pq.read_table(corpus / "zeroshot" / name / "items.parquet")["item_id"].to_pylist()
        assert sorted(table) == sorted(items) and rec["id_table"]["version"] == table.version
        assert rec["id_table"]["stats"]["items"] == len(items)
        assert table.stats["quality"]["items"] == len(items) and table.stats["scheme"] == "generator"
        assert rec["training_id_table"]["items"] > 0 and "word_in_text_share" in rec["training_id_table"]
        on_disk = json.loads((out / f"{name}.json").read_text())
        assert on_disk["metrics"] == rec["metrics"] and on_disk["users"] == test_users
        # Every metric with its sample size and interval; the exact random row over the same users.
        assert set(rec["intervals"]) == {"HR@5", "HR@10", "NDCG@5", "NDCG@10"}
        for m, (lo, hi) in rec["intervals"].items():
            assert lo <= rec["metrics"][m] <= hi
        assert (
            rec["random"]["HR@10"] == pytest.approx(10 / len(items)) and rec["random"]["count"] == test_users
        )
    declared = json.loads((corpus / "config.json").read_text())["datasets"]
    if all(d.get("platform") for d in declared):  # the platform each dataset declares, never its format
        assert {r["dataset"]: r["scenario"] for r in records} == {
            "sports": "intra-platform",
            "yelp": "inter-platform",
        }
    else:
        assert {r["scenario"] for r in records} == {"undeclared platform"}


@pytest.mark.integration
def test_zeroshot_metrics_equal_in_process_ranking_with_the_same_table(tiny_run, zeroshot_run):
    """The actor result equals one in-process scorer over the same users, built from the saved table."""
    from fusionrec.cluster.baselines import evaluate_in_process
    from fusionrec.cluster.generative import IDGenRecScorerFactory, load_evalset
    from fusionrec.trainer.idgen.id_table import IDTable

    records, out, _ = zeroshot_run
    rec = next(r for r in records if r["dataset"] == "yelp")
    ds_dir = tiny_run["corpus"] / "zeroshot" / "yelp" / "processed" / "yelp"
    table = IDTable.load(out / "id_tables" / "yelp.json")
    factory = IDGenRecScorerFactory(
        str(tiny_run["checkpoint"]), str(ds_dir), 10, 10, 32, False, "generate", table
    )
    ref = evaluate_in_process(factory(), load_evalset(ds_dir, "test", "yelp"), (5, 10), batch_size=64)
    assert ref.to_dict() == rec["metrics"]


@pytest.mark.integration
def test_tables_keep_the_paper_apart_and_flag_warned_tables(zeroshot_run):
    from fusionrec.cluster.zeroshot import PAPER_TABLE7

    records, out, _ = zeroshot_run
    assert {r["dataset"]: r["paper_reference"]["numbers"] for r in records} == {
        n: PAPER_TABLE7[n] for n in ZS_DATASETS
    }
    rows = list(csv.DictReader(io.StringIO((out / "zeroshot.csv").read_text())))
    assert not any("paper" in col.lower() for col in rows[0])  # our table holds our measurements only
    ours = [r for r in rows if r["zero_shot"] == "yes"]
    assert [r["dataset"] for r in ours] == ZS_DATASETS
    yelp = ours[1]
    assert yelp["users"] == str(records[1]["users"]) and yelp["users_selection"] == "all"
    assert float(yelp["NDCG@10"]) == pytest.approx(records[1]["metrics"]["NDCG@10"], abs=5e-5)
    assert yelp["id_quality"] == records[1]["id_quality"]["status"]
    reference = list(csv.reader(io.StringIO((out / "zeroshot.reference.csv").read_text())))
    yelp_ref = [r for r in reference if r[0] == "yelp"]
    assert yelp_ref[0][1] == "paper IDGenRec (Table 7)" and yelp_ref[0][3] == "0.0329"
    md = (out / "zeroshot.md").read_text()
    ours_md, ref_md = md.split("## Reference only")
    assert "0.0329" not in ours_md and "| yelp | paper UniSRec (Table 7) |" in ref_md
    assert "19 OTHER Amazon review datasets" in ref_md
    assert "| sports |  | random ranking (exact expectation) |" in ours_md
    for r in records:  # a warned (degenerate) table is flagged in the table, not only in the log
        if r["id_quality"]["problems"]:
            assert f"**DEGENERATE (warned): {'; '.join(r['id_quality']['problems'])}**" in ours_md
    png = (out / "zeroshot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


@pytest.mark.integration
def test_title_trained_run_gets_title_ids_for_unseen_items_and_passes(title_run, ray_session, tmp_path):
    """A recommender trained on fixed title IDs gets title IDs for the held-out items, built exactly like
    training's (`title_table` with the run's title_words and tokenizer); the table passes the default
    (refusing) quality gate and the scheme is recorded."""
    from fusionrec.cluster.checkpoint_io import load_checkpoint_tokenizer
    from fusionrec.cluster.heldout_ids import trained_id_scheme
    from fusionrec.cluster.zeroshot import run_zeroshot
    from fusionrec.trainer.idgen.id_table import IDTable
    from fusionrec.trainer.recipes.idgenrec.data import encodable_fn, load_items, title_table

    scheme = trained_id_scheme(title_run["checkpoint"])
    assert scheme["scheme"] == "title" and scheme["order"] == ["rec"], scheme
    out = tmp_path / "results"
    records = run_zeroshot(title_run["checkpoint"], title_run["corpus"], ["yelp"], cfg=small_cfg(),
                           results_dir=out)  # fmt: skip
    (rec,) = records
    ds_dir = title_run["corpus"] / "zeroshot" / "yelp" / "processed" / "yelp"
    _, titles = load_items(ds_dir)
    tok = load_checkpoint_tokenizer(title_run["checkpoint"])
    expected = title_table(titles, scheme["title_words"], encodable_fn(tok))
    table = IDTable.load(out / "id_tables" / "yelp.json")
    assert table.as_dict() == expected.as_dict() and table.method == "title"
    assert rec["id_scheme"]["scheme"] == "title" and rec["id_table"]["method"] == "title"
    q = table.stats["quality"]
    assert q["word_in_text_share"] >= 0.9 and rec["id_quality"]["status"] == "ok"
    assert rec["id_quality"]["problems"] == [] and rec["metrics"]["count"] == rec["users"] > 0


@pytest.mark.integration
def test_degenerate_table_refused_before_any_scoring(tiny_run, tmp_path, monkeypatch):
    """Character-junk IDs (not words of the items' texts) are refused with the diagnostic values and
    thresholds, before any dataset is scored: no actor, no unit, no per-dataset result, no summary."""
    import fusionrec.cluster.zeroshot as zs
    from fusionrec.trainer.idgen.id_table import IDTable

    junk = ["tttttttt", "eeeesy", "nenn", "ssss", "eeeee", "tnnt", "sesy", "nnnnnn"]

    def junk_table(ckpt, dataset_dir, scheme, *args, **kwargs):
        from fusionrec.cluster.generative import dataset_item_ids
        from fusionrec.cluster.heldout_ids import item_texts

        items = dataset_item_ids(dataset_dir)
        table = IDTable({i: f"{junk[n % len(junk)]} {n // len(junk) + 1}" for n, i in enumerate(items)},
                        "generative", 1, {"second_attempt_share": 0.23})  # fmt: skip
        return table.with_stats(scheme="generator", quality=table.quality(item_texts(dataset_dir)))

    def no_scoring(*args, **kwargs):
        raise AssertionError("a user was scored before the degenerate table was refused")

    monkeypatch.setattr(zs, "heldout_id_table", junk_table)
    monkeypatch.setattr(zs, "evaluate", no_scoring)
    out = tmp_path / "results"
    with pytest.raises(ValueError) as err:
        zs.run_zeroshot(tiny_run["checkpoint"], tiny_run["corpus"], cfg=small_cfg(), results_dir=out)
    msg = str(err.value)
    assert "zero-shot dataset 'sports'" in msg and "degenerate ID table, refusing to score it" in msg
    assert re.search(r"word_in_text_share 0\.\d+ < min_word_in_text 0\.5", msg), msg
    assert re.search(r"duplicate_base_share 0\.\d+ > max_duplicate_base 0\.2", msg), msg
    assert "'min_word_in_text': 0.5" in msg and "zeroshot.id_quality = 'warn'" in msg
    assert (out / "id_tables" / "sports.json").is_file()  # kept for inspection
    assert not (out / "units").exists() and not (out / "baselines").exists()
    assert [p.name for p in out.glob("*.json")] == ["run_identity.json"] and not list(out.glob("zeroshot.*"))


@pytest.mark.integration
def test_heldout_ids_equal_on_driver_one_actor_two_actors_resumed_and_reference(tiny_run, ray_session, tmp_path):
    """Algorithm 1 for a held-out platform: on the driver, on 1 Ray actor, on 2 Ray actors, and resumed from
    a store cut in the middle of a round — the same table, which is the one-item reference walk's."""
    import shutil

    from fusionrec.cluster.checkpoint_io import load_id_generator
    from fusionrec.cluster.heldout_ids import generate_dataset_table
    from fusionrec.cluster.idgen_pool import IDGenPoolConfig
    from fusionrec.trainer.idgen.generator import IDGenConfig, assign_ids_sequential
    from fusionrec.trainer.recipes.idgenrec.data import load_items

    ckpt = tiny_run["checkpoint"]
    ds = tiny_run["corpus"] / "zeroshot" / "sports" / "processed" / "sports"
    cfg = IDGenConfig(window=6, max_windows=1, lambda_max=3.0, batch_size=8)  # several jobs per round
    local = generate_dataset_table(ckpt, ds, cfg, store_dir=tmp_path / "local")
    one = generate_dataset_table(ckpt, ds, cfg, pool=IDGenPoolConfig(num_actors=1), store_dir=tmp_path / "one")
    two = generate_dataset_table(ckpt, ds, cfg, pool=IDGenPoolConfig(num_actors=2))
    model, tok = load_id_generator(ckpt)
    reference = assign_ids_sequential(model, tok, load_items(ds)[0], cfg)
    assert local.as_dict() == one.as_dict() == two.as_dict() == reference.as_dict()
    assert local.stats["walks"] > 1  # collisions made later rounds
    # A kill in the middle of round 0: the later rounds and half of round 0's jobs are lost.
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "one", cut)
    jobs = sorted(cut.glob("round-00000.job-*.json"))
    assert len(jobs) >= 2
    for path in [*jobs[len(jobs) // 2 :], *cut.glob("round-0000[1-9]*")]:
        path.unlink()
    resumed = generate_dataset_table(ckpt, ds, cfg, pool=IDGenPoolConfig(num_actors=2), store_dir=cut)
    assert resumed.as_dict() == reference.as_dict()
    assert len(list(cut.glob("round-*.job-*.json"))) == len(list((tmp_path / "one").glob("round-*.job-*.json")))


@pytest.mark.integration
def test_most_popular_row_fit_on_the_heldout_train_split_same_users(tiny_run, zeroshot_run):
    """Beside the model: most-popular fitted on each held-out dataset's own training split, on the model's
    users, equal to an in-process recomputation from the training split; labelled in every table."""
    from fusionrec.cluster.baselines import (
        MostPopularScorer,
        evaluate_in_process,
        load_corpus,
        train_sequences,
    )
    from fusionrec.cluster.generative import load_evalset

    records, out, _ = zeroshot_run
    for rec in records:
        name, pop = rec["dataset"], rec["most_popular"]
        ds_dir = tiny_run["corpus"] / "zeroshot" / name / "processed" / name
        assert pop["model"] == "most_popular" and "own training split" in pop["fit_on"]
        assert pop["users"] == rec["users"] and pop["users_selection"] == rec["users_selection"]
        assert pop["metrics"]["count"] == rec["metrics"]["count"] and set(pop["metrics"]) == set(
            rec["metrics"]
        )
        seqs, vocab, _ = load_corpus(ds_dir)
        counts = np.bincount(np.concatenate(train_sequences(seqs, vocab)), minlength=len(vocab))
        ref = evaluate_in_process(
            MostPopularScorer(counts, 10), load_evalset(ds_dir, "test", name), (5, 10), 64
        )
        assert ref.to_dict() == pop["metrics"]
    md = (out / "zeroshot.md").read_text()
    assert "| yelp |  | most-popular (fit on yelp's own train split; not zero-shot) |" in md
    rows = list(csv.DictReader(io.StringIO((out / "zeroshot.csv").read_text())))
    sports = next(r for r in rows if r["dataset"] == "sports" and r["row"].startswith("most-popular"))
    assert sports["zero_shot"] == "no" and records[0]["most_popular"]["zero_shot"] is False
    assert float(sports["HR@10"]) == pytest.approx(records[0]["most_popular"]["metrics"]["HR@10"], abs=5e-5)
    lo, hi = records[0]["most_popular"]["intervals"]["HR@10"]
    assert (
        float(sports["HR@10 ci95 lo"]) == pytest.approx(lo, abs=5e-5) and lo <= float(sports["HR@10"]) <= hi
    )


def write_heldout(corpus: Path, name: str, sequences: dict[str, list[str]], items: list[str]) -> None:
    d = corpus / "zeroshot" / name / "processed" / name
    d.mkdir(parents=True)
    pq.write_table(
        pa.table({"item_id": items, "text": [f"title: thing {i}" for i in items]}), d / "items.parquet"
    )
    pq.write_table(pa.table({"user_id": list(sequences), "item_ids": list(sequences.values())}),
                   d / "sequences.parquet")  # fmt: skip


@pytest.mark.integration
def test_most_popular_metrics_by_hand(tmp_path, ray_session):
    """12 items; training splits (items[:-2]) give counts i3=3, i5=2, i7=2, the rest 0, so everyone gets
    i3 i5 i7 i0 i1 i2 i4 i6 i8 i9 i10 i11 (ties by item order). Test targets: u1 i11 (rank 12, miss),
    u2 i2 (rank 6), u3 i5 (rank 2), u4 i6 (rank 8)."""
    import math

    from fusionrec.cluster.zeroshot import _prepare_dataset, most_popular_record

    items = [f"i{n}" for n in range(12)]
    seqs = {"u1": ["i3", "i5", "i7", "i1", "i11"], "u2": ["i3", "i5", "i0", "i2"], "u3": ["i3", "i8", "i5"],
            "u4": ["i7", "i4", "i6"]}  # fmt: skip
    write_heldout(tmp_path / "corpus", "shop", seqs, items)
    cfg = small_cfg()
    prep = _prepare_dataset(tmp_path / "corpus", "shop", cfg.generative)
    rec = most_popular_record("shop", prep, cfg, tmp_path / "out")
    m = rec["metrics"]
    assert rec["users"] == m["count"] == 4
    assert m["HR@5"] == pytest.approx(1 / 4) and m["HR@10"] == pytest.approx(3 / 4)
    assert m["NDCG@5"] == pytest.approx((1 / math.log2(3)) / 4)
    assert m["NDCG@10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(7) + 1 / math.log2(9)) / 4)
    # The same users as the model: a seeded sample of 2 is what most-popular is evaluated on too.
    sampled = small_cfg(max_users=2, seed=1)
    prep2 = _prepare_dataset(tmp_path / "corpus", "shop", sampled.generative)
    rec2 = most_popular_record("shop", prep2, sampled, tmp_path / "out2")
    assert rec2["users"] == 2 and rec2["users_selection"] == prep2["selection"]


@pytest.mark.unit
def test_paper_numbers_and_aliases():
    from fusionrec.cluster.zeroshot import paper_numbers

    assert paper_numbers("Digital_Music")["IDGenRec"]["HR@10"] == 0.0238
    assert paper_numbers("instruments")["UniSRec"]["NDCG@10"] == 0.0125
    assert paper_numbers("movielens") is None


@pytest.mark.unit
def test_config_needs_cutoffs_5_and_10():
    from fusionrec.cluster.evaluator import EvaluatorConfig
    from fusionrec.cluster.zeroshot import ZeroShotConfig

    with pytest.raises(ValueError, match="must include 5 and 10"):
        ZeroShotConfig(evaluator=EvaluatorConfig(ks=(1, 20)))
    with pytest.raises(ValueError, match="top_k"):
        ZeroShotConfig(evaluator=EvaluatorConfig(ks=(5, 10, 50)))


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.integration
def test_heldout_item_without_text_fails_before_any_evaluation(tiny_run, tmp_path):
    from fusionrec.cluster.zeroshot import run_zeroshot

    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_run["corpus"], corpus)
    items_path = corpus / "zeroshot" / "yelp" / "processed" / "yelp" / "items.parquet"
    table = pq.read_table(items_path)
    texts = table["text"].to_pylist()
    texts[3] = "   "
    pq.write_table(
        table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts)), items_path
    )
    bad_item = table["item_id"][3].as_py()
    out = tmp_path / "results"
    with pytest.raises(ValueError, match=rf"items\.parquet: row 3, item '{bad_item}': empty text"):
        run_zeroshot(tiny_run["checkpoint"], corpus, cfg=small_cfg(), results_dir=out)
    assert not out.exists()  # sports (valid) was not evaluated either: inputs are checked up front


@pytest.mark.unit
def test_unreachable_ray_address_fails_fast(tmp_path):
    from fusionrec.cluster.ray_local import RayConfig
    from fusionrec.cluster.zeroshot import run_zeroshot
    from fusionrec.ports import free_port

    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError, match=f"Ray address '{address}' is unreachable"):
        # Checked first: neither the checkpoint nor the corpus is touched (they need not even exist).
        run_zeroshot(tmp_path / "ckpt", tmp_path / "corpus", cfg=small_cfg(ray=RayConfig(address=address,
                     connect_timeout_s=1.0)), results_dir=tmp_path / "r")  # fmt: skip
    assert time.perf_counter() - t0 < 30 and not (tmp_path / "r").exists()


@pytest.mark.integration
def test_results_dir_of_another_run_is_refused(tiny_run, tmp_path):
    from fusionrec.cluster.generative import claim_results_dir
    from fusionrec.cluster.zeroshot import run_zeroshot

    out = tmp_path / "results"
    claim_results_dir(out, {"checkpoint": "/elsewhere/run/checkpoints/step-9", "corpus": "/x"})
    (out / "zeroshot.md").write_text("| stale |")  # must not survive as if complete
    with pytest.raises(ValueError, match="belongs to another run"):
        run_zeroshot(tiny_run["checkpoint"], tiny_run["corpus"], cfg=small_cfg(), results_dir=out)
    assert (out / "zeroshot.md").read_text() == "| stale |"  # another run's files are left alone
    assert sorted(p.name for p in out.iterdir()) == ["run_identity.json", "zeroshot.md"]


@pytest.mark.integration
def test_unknown_heldout_dataset_and_missing_zeroshot_folder(tiny_run, tmp_path):
    from fusionrec.cluster.zeroshot import run_zeroshot

    with pytest.raises(ValueError, match=r"zeroshot.datasets \['toys'\] are not in"):
        run_zeroshot(tiny_run["checkpoint"], tiny_run["corpus"], ["toys"], cfg=small_cfg())
    empty = tmp_path / "corpus"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no held-out datasets"):
        run_zeroshot(tiny_run["checkpoint"], empty, cfg=small_cfg())
