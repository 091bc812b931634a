"""Evaluator actor pool: exact merging across actor counts, actor death, resume, results files."""

from __future__ import annotations

import json
import sys
import threading

import numpy as np
import pyarrow as pa
import pytest
import torch
from fusionrec.cluster.baselines import (
    MostPopularFactory,
    MostPopularScorer,
    evaluate_in_process,
    fit_most_popular,
    save_most_popular,
    train_sequences,
)
from fusionrec.cluster.evaluator import (
    EvalSet,
    EvaluatorConfig,
    UserBatch,
    evaluate,
    plot_results,
    results_csv,
    results_markdown,
    write_results,
)
from fusionrec.cluster.ray_local import RayConfig, init_ray
from fusionrec.trainer.metrics import MetricSums


def make_sequences(n_users: int = 300, n_items: int = 40, seed: int = 0) -> tuple[pa.Table, list[str]]:
    """Users whose next item is usually the successor of the last one (learnable), else a popular item."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, n_items + 1)
    users, seqs = [], []
    for u in range(n_users):
        seq = [int(rng.choice(n_items, p=pop / pop.sum()))]
        for _ in range(int(rng.integers(2, 12))):
            nxt = (
                (seq[-1] + 1) % n_items if rng.random() < 0.7 else int(rng.choice(n_items, p=pop / pop.sum()))
            )
            seq.append(nxt)
        users.append(f"u{u}")
        seqs.append([f"i{i}" for i in seq])
    return pa.table({"user_id": users, "item_ids": seqs}), [f"i{i}" for i in range(n_items)]


class SlowScorer:
    """Most-popular with a delay per batch, so units are still in flight when a test kills an actor."""

    def __init__(self, inner: MostPopularScorer, delay_s: float) -> None:
        self.inner, self.delay_s, self.top_k = inner, delay_s, inner.top_k

    def rank(self, batch: UserBatch) -> np.ndarray:
        import time

        time.sleep(self.delay_s)
        return self.inner.rank(batch)


class SlowFactory:
    def __init__(self, inner: MostPopularFactory, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s

    def __call__(self) -> SlowScorer:
        return SlowScorer(self.inner(), self.delay_s)


@pytest.fixture(scope="module")
def ray_session():
    import ray
    from ray import cloudpickle

    # Test-module classes (SlowFactory) travel to actors by value: tests/ is not on the workers' path.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    init_ray(RayConfig(num_cpus=2))
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    seqs, items = make_sequences()
    ckpt = tmp_path_factory.mktemp("ckpt") / "most_popular"
    save_most_popular(ckpt, fit_most_popular(train_sequences(seqs, items), len(items)), items)
    data = EvalSet.from_sequences(seqs, "test", "tiny", items)
    return data, MostPopularFactory(str(ckpt), top_k=20), seqs, items


@pytest.mark.unit
def test_evalset_leave_one_out_and_skips():
    seqs = pa.table(
        {"user_id": ["a", "b", "c"], "item_ids": [["x", "y", "z", "w"], ["y", "x"], ["z", "y", "x"]]}
    )
    items = ["w", "x", "y", "z"]
    test = EvalSet.from_sequences(seqs, "test", "t", items)
    assert test.user_ids == ["a", "c"] and test.skipped == {"fewer_than_3_items": 1}
    assert test.history(0).tolist() == [1, 2, 3] and test.targets.tolist() == [0, 1]
    valid = EvalSet.from_sequences(seqs, "valid", "t", items)
    assert valid.history(0).tolist() == [1, 2] and valid.targets.tolist() == [3, 2]
    with pytest.raises(ValueError, match="item 'q' missing"):
        EvalSet.from_sequences(
            pa.table({"user_id": ["a"], "item_ids": [["q", "x", "y"]]}), "test", "t", items
        )


@pytest.mark.unit
def test_config_validation():
    with pytest.raises(ValueError, match="num_actors"):
        EvaluatorConfig(num_actors=-1)
    assert EvaluatorConfig(num_actors=0).num_actors == 0  # in this process
    with pytest.raises(ValueError, match="ks"):
        EvaluatorConfig(ks=())


@pytest.fixture(scope="module")
def one_and_two(ray_session, tiny):
    data, factory, _, _ = tiny
    one = evaluate(data, factory, EvaluatorConfig(num_actors=1, unit_size=37, progress=False))
    two = evaluate(data, factory, EvaluatorConfig(num_actors=2, unit_size=37, progress=False))
    return one, two


@pytest.mark.integration
def test_one_actor_equals_two_actors_equals_reference(one_and_two, tiny):
    data, factory, _, _ = tiny
    reference = evaluate_in_process(factory(), data, (5, 10, 20)).to_dict()
    # Hand-computed check of one number: most-popular gives everyone the same list.
    order = factory().order[:10].tolist()
    assert reference["HR@10"] == pytest.approx(np.isin(data.targets, order).mean(), abs=0)
    one, two = one_and_two
    assert one.metrics == two.metrics == reference
    assert one.users == two.users == len(data) == 300
    assert one.units == two.units == 9  # 8 x 37 + a short last unit of 4: no drop_last


@pytest.mark.integration
def test_in_process_equals_the_actor_pools_without_touching_ray(one_and_two, tiny, tmp_path, monkeypatch):
    """num_actors = 0 (a machine without Ray): the same units, per-user ranks and metrics as 1 or 2 actors,
    resumable from its unit files; `import ray` would fail here."""
    data, factory, _, _ = tiny
    monkeypatch.setitem(sys.modules, "ray", None)
    cfg = EvaluatorConfig(num_actors=0, unit_size=37, progress=False)
    local = evaluate(data, factory, cfg, results_dir=tmp_path / "units")
    one, _ = one_and_two
    assert local.metrics == one.metrics and local.ranks.tolist() == one.ranks.tolist()
    assert local.units == 9 and local.actor_nodes == ["local"] and local.units_resumed == 0
    (tmp_path / "units" / "unit-000003.json").unlink()  # an interrupted run: 8 of 9 units on disk
    again = evaluate(data, factory, cfg, results_dir=tmp_path / "units")
    assert again.units_resumed == 8 and again.metrics == local.metrics


@pytest.mark.integration
def test_killed_actor_is_replaced_without_double_counting(ray_session, tiny):
    import ray

    data, factory, _, _ = tiny
    reference = evaluate_in_process(factory(), data, (5, 10, 20)).to_dict()
    killed = threading.Event()

    def kill_first(pool, inflight: int) -> None:
        if not killed.is_set() and inflight > 0:
            ray.kill(pool.actors[0], no_restart=True)  # it holds 2 queued units right now
            killed.set()

    slow = SlowFactory(factory, delay_s=0.05)
    cfg = EvaluatorConfig(num_actors=2, unit_size=20, batch_size=10, progress=False)
    res = evaluate(data, slow, cfg, scorer_desc={"t": "slow"}, on_progress=kill_first)
    assert killed.is_set() and res.units_retried >= 1
    assert res.metrics == reference and res.users == len(data)


@pytest.mark.integration
def test_resume_and_foreign_results_dir(ray_session, tiny, tmp_path):
    data, factory, seqs, items = tiny
    cfg = EvaluatorConfig(num_actors=1, unit_size=50, progress=False)
    full = evaluate(data, factory, cfg, results_dir=tmp_path / "units")
    units = sorted((tmp_path / "units").glob("unit-*.json"))
    assert len(units) == 6
    for path in units[2:5]:  # as if the run had died before these three finished
        path.unlink()
    resumed = evaluate(data, factory, cfg, results_dir=tmp_path / "units")
    assert resumed.units_resumed == 3 and resumed.metrics == full.metrics and resumed.users == len(data)
    other = tmp_path / "other"
    save_most_popular(other, np.arange(len(items))[::-1].copy(), items)
    with pytest.raises(ValueError, match="another run"):
        evaluate(data, MostPopularFactory(str(other), top_k=20), cfg, results_dir=tmp_path / "units")


@pytest.mark.integration
def test_bad_checkpoint_fails_clearly(ray_session, tiny, tmp_path):
    data, factory, _, _ = tiny
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"model": "most_popular"}))
    with pytest.raises(RuntimeError, match="no id_table.json"):
        evaluate(
            data, MostPopularFactory(str(tmp_path / "ckpt")), EvaluatorConfig(num_actors=1, progress=False)
        )


@pytest.mark.integration
def test_results_files(one_and_two, tmp_path):
    res = one_and_two[1]
    path = write_results(tmp_path, res, config={"k": 1}, checkpoint="ck")
    rec = json.loads(path.read_text())
    assert path == tmp_path / "eval" / "tiny.json"
    assert rec["users"] == 300 and rec["checkpoint"] == "ck" and rec["metrics"] == res.metrics
    assert rec["users_per_s"] > 0 and rec["seconds"] > 0
    rows = [{**rec, "model": "pop"}]
    md = results_markdown(rows).splitlines()
    assert md[0] == "| model | dataset | HR@5 | HR@10 | NDCG@5 | NDCG@10 | users | seconds |"
    assert md[2].startswith(f"| pop | tiny | {res.metrics['HR@5']:.4f} |")
    assert results_csv(rows).splitlines()[1].split(",")[:3] == ["pop", "tiny", f"{res.metrics['HR@5']:.4f}"]
    png = plot_results(rows, tmp_path / "r.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.unit
def test_metric_sums_from_topk_match_hand_computation():
    topk = torch.tensor([[3, 1, 2], [0, 1, 2], [2, 0, 1]])
    sums = MetricSums.from_topk(topk, torch.tensor([1, 3, 2]), ks=(1, 3))
    m = sums.to_dict()
    assert m["HR@1"] == pytest.approx(1 / 3) and m["HR@3"] == pytest.approx(2 / 3)
    assert m["NDCG@3"] == pytest.approx((1 / np.log2(3) + 1.0) / 3)
