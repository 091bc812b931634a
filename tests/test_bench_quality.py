"""bench quality's own logic: stage resumption, checkpoint selection, ID-change shares, the result lines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fusionrec.bench import gpu, quality

pytestmark = pytest.mark.unit


def test_a_finished_stage_is_not_run_again(tmp_path) -> None:
    calls = []

    def stage(x):
        calls.append(x)
        return {"x": x}

    first = quality._stage(tmp_path, "s", stage, 1)
    assert first["x"] == 1 and first["_commit"]  # the code that computed it is kept with it
    assert quality._stage(tmp_path, "s", stage, 2) == first  # the marker file answers; fn is not called
    assert calls == [1] and json.loads((tmp_path / "s.json").read_text()) == first


def test_a_failed_stage_leaves_no_marker(tmp_path) -> None:
    def broken():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        quality._stage(tmp_path, "s", broken)
    assert not (tmp_path / "s.json").exists()


def test_selection_takes_the_best_validation_point_and_the_earlier_of_a_tie() -> None:
    pts = [{"step": 1, "HR@10": 0.01}, {"step": 2, "HR@10": 0.03}, {"step": 3, "HR@10": 0.03}]
    assert quality.select(pts)["step"] == 2
    assert quality.select(pts[:1])["step"] == 1


def test_id_change_shares_between_consecutive_tables(tmp_path) -> None:
    from fusionrec.trainer.idgen.id_table import IDTable

    rounds = [
        {"a": "x a", "b": "x b", "c": "y c", "d": "z d"},
        {"a": "x a", "b": "q b", "c": "y c", "d": "z d"},  # 1 of 4 changed
        {"a": "n a", "b": "n b", "c": "n c", "d": "z d"},  # 3 of 4 changed
    ]
    for r, ids in enumerate(rounds + [rounds[-1]] * 8):  # r10 must sort after r2 (numeric order)
        IDTable(ids, "generative", r).save(tmp_path / "id_tables" / f"r{r}-{r:04d}.json")
    shares = [c["changed_share"] for c in quality.id_changes(tmp_path)]
    assert shares == [0.25, 0.75] + [0.0] * 8
    assert quality.id_changes(tmp_path)[-1]["to"].startswith("r10-")


def _record(model: str, ranks: list[int]) -> dict:
    hits = np.asarray([0 <= r < 10 for r in ranks], dtype=float)
    m = {"HR@5": 0.0, "HR@10": float(hits.mean()), "NDCG@5": 0.0, "NDCG@10": 0.0}
    return {"model": model, "metrics": m, "ranks": ranks, "users": len(ranks), "seconds": 1.0,
            "intervals": {"HR@10": [0.0, 1.0]}}  # fmt: skip


def test_lines_pair_the_models_on_the_same_users() -> None:
    tst = {"records": [
        _record("idgenrec", [0, -1, 3, 12]),  # hits users 0 and 2
        _record("sasrec", [0, 1, -1, -1]),  # hits users 0 and 1
        _record("most_popular", [-1, -1, -1, 9]),  # hits user 3
        {"model": "random (exact)", "metrics": {"HR@5": 0.1, "HR@10": 0.2, "NDCG@5": 0.0, "NDCG@10": 0.0},
         "users": 4, "seconds": 0.0},
    ]}  # fmt: skip
    cur = {"points": [{"step": 10, "HR@10": 0.5, "ci95": [0.1, 0.9], "users": 4, "minutes": 1.0,
                       "most_popular_HR@10": 0.25}], "selected": {"step": 10}, "id_changes": []}  # fmt: skip
    sas = {"train_minutes": 2.0, "valid_users": 4, "curve": [{"minutes": 0.5, "epoch": 2, "HR@10": 0.25}]}
    out = quality.lines("titles", {"minutes": 1.0}, sas, {"train_minutes": 1.5}, cur, tst, {"dataset": "d"})
    by = {(x["bench"], x["model"]): x for x in out}
    assert (
        by[("quality_test", "idgenrec")]["ours"] == 0.5
        and by[("quality_test", "idgenrec")]["baseline"] == 0.25
    )
    assert by[("quality_test", "sasrec")]["train_minutes"] == 2.0
    assert by[("quality_test", "random (exact)")]["ci95"] is None
    pair = by[("quality_paired", "idgenrec vs sasrec")]
    assert pair["difference"] == 0.0 and pair["users"] == 4  # one user each way: +1, -1 over 4 users
    assert by[("quality_paired", "idgenrec vs most_popular")]["difference"] == 0.25  # (1 + 1 - 1) / 4
    curve = [x for x in out if x["bench"] == "quality_curve"]
    assert [c["model"] for c in curve] == ["idgenrec", "sasrec"] and curve[0]["selected"] is True


def test_genrec_lines_name_genrec_and_pair_it_with_sasrec() -> None:
    tst = {"records": [_record("genrec", [0, -1, -1, 12]), _record("sasrec", [0, 1, -1, -1]),
                       _record("most_popular", [-1, -1, -1, 9])]}  # fmt: skip
    cur = {"points": [{"step": 5, "HR@10": 0.25, "ci95": [0.0, 0.5], "users": 4, "minutes": 1.0,
                       "most_popular_HR@10": 0.25}], "selected": {"step": 5}, "id_changes": []}  # fmt: skip
    sas = {"train_minutes": 2.0, "valid_users": 4, "curve": []}
    out = quality.lines("genrec", {"minutes": 1.0}, sas, {"train_minutes": 1.5}, cur, tst, {})
    by = {(x["bench"], x["model"]): x for x in out}
    assert by[("quality_test", "genrec")]["train_minutes"] == 1.5
    assert by[("quality_paired", "genrec vs sasrec")]["difference"] == -0.25  # user 1: SASRec only
    assert by[("quality_curve", "genrec")]["selected"] is True


@pytest.mark.parametrize("variant", sorted(quality.VARIANTS))
def test_every_variant_gives_a_valid_config_of_its_recipe(variant: str, tmp_path) -> None:
    v = quality.VARIANTS[variant]
    plan = dict(quality.QUICK)
    overrides = quality.recipe_overrides(
        v, tmp_path / "run", tmp_path / "corpus", tmp_path / "t5", plan, [*v.overrides]
    )
    cfg = quality._check_config(v.config, overrides)
    assert cfg.train.max_minutes == plan["minutes"] and cfg.train.checkpoint.every_steps == plan["every"]
    assert str(cfg.corpus_dir()) == str(tmp_path / "corpus") or cfg.idgenrec.data.corpus == str(
        tmp_path / "corpus"
    )


@pytest.mark.parametrize("variant", sorted(gpu.QUALITY_SCHEDULES))
def test_every_gpu_schedule_gives_a_valid_gpu_config(variant: str, tmp_path) -> None:
    """bench gpu --suite quality: the variant's overrides, then its GPU schedule, on idgenrec_beauty_gpu."""
    v = quality.VARIANTS[variant]
    schedule = gpu.quality_schedule(variant, 3.0)
    plan = dict(quality.QUICK)
    overrides = quality.recipe_overrides(
        v, tmp_path / "run", tmp_path / "corpus", tmp_path / "t5", plan, [*v.overrides, *schedule]
    )
    cfg = quality._check_config("idgenrec_beauty_gpu", overrides)
    per_minute = gpu.QUALITY_SCHEDULES[variant][0]
    assert cfg.train.optim.total_steps == 3 * per_minute and cfg.train.optim.warmup_steps == 200
    assert cfg.idgenrec.recommender.d_model == 512  # the GPU recipe's t5-small shape, not the CPU's


def test_a_finished_stage_asked_for_other_params_is_refused_not_served(tmp_path) -> None:
    quality._stage(tmp_path, "t", lambda: {"x": 1}, params={"test_users": 300})
    assert quality._stage(tmp_path, "t", lambda: {"x": 2}, params={"test_users": 300})["x"] == 1
    with pytest.raises(
        ValueError, match=r"t\.json: computed with \{'test_users': 300\}.*\{'test_users': 0\}"
    ):
        quality._stage(tmp_path, "t", lambda: {"x": 3}, params={"test_users": 0})
    quality._stage(tmp_path, "old", lambda: {"x": 1})  # written before stages kept their params: reused
    assert quality._stage(tmp_path, "old", lambda: {"x": 2}, params={"test_users": 0})["x"] == 1


def test_variants_are_paired_only_on_the_same_test_users_across_recipe_folders(tmp_path) -> None:
    users, sel = {"test_users": 4}, "seeded sample of 4"
    folders = ("idgenrec_beauty_cpu", "genrec_beauty_cpu", "idgenrec_beauty_gpu", "idgenrec_beauty_cpu-quick")
    ours_dir, genrec_dir, gpu_dir, quick_dir = (tmp_path / d for d in folders)
    for d in (ours_dir, genrec_dir, gpu_dir, quick_dir):
        d.mkdir()

    def stage(folder: Path, variant: str, model: str, ranks: list[int], **extra) -> dict:
        st = {"records": [{**_record(model, ranks), "users_selection": sel}], "_params": users, **extra}
        (folder / f"test-{variant}.json").write_text(json.dumps(st))
        return st

    stage(ours_dir, "titles", "idgenrec", [0, -1, -1, 12], _commit="abc")
    (ours_dir / "idgenrec-titles.json").write_text(json.dumps({"train_minutes": 30.004}))
    stage(gpu_dir, "idgen", "idgenrec", [0, 0, 0, 0])  # the same variant in another config's folder: paired
    stage(quick_dir, "titles", "idgenrec", [0, -1, -1, 12])  # a smoke run: never paired with a full one
    stage(ours_dir, "genrec", "idgenrec", [0, -1, -1, 12])  # no genrec record in it: skipped
    stage(genrec_dir, "genrec", "genrec", [-1, -1, -1, -1])  # GenRec beside IDGenRec: paired
    idgen = stage(ours_dir, "idgen", "idgenrec", [0, 2, 3, -1])  # ours: never paired with itself
    out = quality.variant_pairs(ours_dir, "idgen", idgen, users, {})
    by = {(x["model"], x["metric"]): x for x in out}
    assert [x["model"] for x in out][::2] == ["idgen vs genrec", "idgen vs titles",
                                              "idgen vs idgen (idgenrec_beauty_gpu)"]  # fmt: skip
    hr = by[("idgen vs titles", "HR@10")]
    assert hr["other_commit"] == "abc" and hr["other_train_minutes"] == 30.0
    assert by[("idgen vs genrec", "HR@10")]["other_commit"] == "not recorded"
    assert by[("idgen vs genrec", "HR@10")]["other_train_minutes"] is None  # no train stage file
    assert hr["difference"] == 0.5 and hr["users"] == 4  # users 1 and 2: idgen only
    assert by[("idgen vs genrec", "HR@10")]["difference"] == 0.75  # users 0, 1, 2 hit; GenRec none
    ndcg = (1 / np.log2(4) + 1 / np.log2(5)) / 4  # ranks 2 and 3 gained
    assert by[("idgen vs titles", "NDCG@10")]["difference"] == pytest.approx(ndcg, abs=1e-5)
    gpu = quality.variant_pairs(gpu_dir, "idgen", idgen, users, {})  # our own run in a non-default folder
    ours_gpu = "idgen (idgenrec_beauty_gpu) vs"
    assert [x["model"] for x in gpu][::2] == [f"{ours_gpu} genrec", f"{ours_gpu} idgen", f"{ours_gpu} titles"]
    assert quality.variant_pairs(ours_dir, "idgen", idgen, {"test_users": 0}, {}) == []  # other count
    other = {"records": [{**idgen["records"][0], "users_selection": "all 4 test users"}]}
    assert quality.variant_pairs(ours_dir, "idgen", other, users, {}) == []  # other users


@pytest.mark.integration
def test_scoring_stages_in_process_equal_the_actor_pool(tmp_path_factory, tmp_path, monkeypatch) -> None:
    """`--actors 0` (a GPU machine without Ray): the validation curve scored in this process, with `import ray`
    failing, equals the 2-actor curve point for point."""
    import shutil
    import sys

    import ray
    from test_zeroshot import build_tiny_run

    tiny = build_tiny_run(tmp_path_factory.getbasetemp() / "tiny_idgenrec_run")
    run_dir = shutil.copytree(tiny["checkpoint"].parent.parent, tmp_path / "run")  # curve writes valid-eval/
    started_here = not ray.is_initialized()
    try:
        pooled = quality.curve(run_dir, tiny["corpus"], 12, quality.Scoring(actors=2))
    finally:
        if started_here:
            ray.shutdown()
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "ray", None)
        local = quality.curve(run_dir, tiny["corpus"], 12, quality.Scoring(actors=0))

    def key(c: dict) -> list[tuple]:
        return [(p["step"], p["HR@10"], p["users"], p["most_popular_HR@10"]) for p in c["points"]]

    assert key(pooled) and key(local) == key(pooled)
    assert local["selected"]["step"] == pooled["selected"]["step"]
