"""A real 2-node Ray cluster on 127.0.0.1 (`ray start` head + worker, own ports and temp dir): actors spread
over both nodes with unchanged metrics; `ray job submit` of a jobs.py entry point succeeds / fails visibly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fusionrec.cluster.baselines import (
    MostPopularFactory,
    evaluate_in_process,
    fit_most_popular,
    save_most_popular,
    train_sequences,
)
from fusionrec.cluster.evaluator import EvalSet, EvaluatorConfig, evaluate
from fusionrec.cluster.ray_local import LocalRayCluster, RayConfig, _ray_cli, init_ray
from fusionrec.ports import free_port


def make_sequences(n_users: int = 200, n_items: int = 30, seed: int = 1) -> tuple[pa.Table, list[str]]:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1)
    p /= p.sum()
    seqs = [
        [f"i{i}" for i in rng.choice(n_items, size=int(rng.integers(3, 10)), p=p)] for _ in range(n_users)
    ]
    return pa.table({"user_id": [f"u{u}" for u in range(n_users)], "item_ids": seqs}), [
        f"i{i}" for i in range(n_items)
    ]


@pytest.fixture(scope="module")
def cluster():
    import ray

    ray.shutdown()
    with LocalRayCluster(num_workers=1, cpus_per_node=1) as c:
        yield c
        ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    seqs, items = make_sequences()
    root = tmp_path_factory.mktemp("data")
    (root / "tiny").mkdir()
    pq.write_table(seqs, root / "tiny" / "sequences.parquet")
    ckpt = root / "most_popular"
    save_most_popular(ckpt, fit_most_popular(train_sequences(seqs, items), len(items)), items)
    data = EvalSet.from_sequences(
        seqs, "test", "tiny", sorted({i for s in seqs["item_ids"].to_pylist() for i in s})
    )
    return root, data


@pytest.mark.unit
def test_unreachable_address_fails_fast():
    import ray

    ray.shutdown()
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match="unreachable"):
        init_ray(RayConfig(address=f"127.0.0.1:{free_port()}", connect_timeout_s=2))
    assert time.monotonic() - t0 < 10
    assert not ray.is_initialized()


@pytest.mark.integration
def test_two_node_cluster_spreads_actors_and_matches(cluster, tiny):
    import ray

    root, _ = tiny
    seqs = pq.read_table(root / "tiny" / "sequences.parquet")
    items = [f"i{i}" for i in range(30)]
    data = EvalSet.from_sequences(seqs, "test", "tiny", items)
    factory = MostPopularFactory(str(root / "most_popular"), top_k=20)
    init_ray(RayConfig(address=cluster.address))
    try:
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert len(nodes) == 2
        res = evaluate(data, factory, EvaluatorConfig(num_actors=2, unit_size=25, progress=False))
    finally:
        ray.shutdown()
    assert set(res.actor_nodes) == nodes  # one actor per node
    assert res.metrics == evaluate_in_process(factory(), data).to_dict()
    assert res.users == len(data) == 200


def _submit(cluster: LocalRayCluster, args: list[str]) -> subprocess.CompletedProcess:
    cmd = [_ray_cli(), "job", "submit", "--address", cluster.dashboard_url, "--", sys.executable, "-m"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        cmd + ["fusionrec.cluster.jobs", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.integration
def test_ray_job_submit_baseline_succeeds(cluster, tiny, tmp_path):
    root, _ = tiny
    run = tmp_path / "run"
    proc = _submit(cluster, ["baseline", "--data", str(root / "tiny"), "--out", str(run), "--actors", "2"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rec = json.loads((run / "eval" / "tiny.json").read_text())
    seqs = pq.read_table(root / "tiny" / "sequences.parquet")
    items = sorted({i for s in seqs["item_ids"].to_pylist() for i in s})  # the job's vocabulary
    data = EvalSet.from_sequences(seqs, "test", "tiny", items)
    expected = evaluate_in_process(MostPopularFactory(str(run / "checkpoints" / "most_popular"))(), data)
    assert rec["users"] == 200 and rec["metrics"] == expected.to_dict()
    assert len(set(rec["actor_nodes"])) == 2  # the job's actors ran on the cluster, one per node
    assert (run / "eval" / "results.md").read_text().startswith("| model | dataset |")


@pytest.mark.integration
def test_ray_job_submit_failure_is_a_failure(cluster, tmp_path):
    proc = _submit(cluster, ["baseline", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")])
    assert proc.returncode != 0
    assert "neither a sequences.parquet nor a P5 folder" in proc.stdout + proc.stderr  # the reason surfaces
    assert not (tmp_path / "run" / "eval").exists()


def test_free_ports_are_distinct_and_skip_excluded():
    """One call never returns a port twice (Ray refuses a node whose components share a port)."""
    from fusionrec.ports import free_ports

    first = free_ports(64)
    assert len(set(first)) == 64
    again = free_ports(64, exclude=set(first))
    assert len(set(again)) == 64 and not set(again) & set(first)
