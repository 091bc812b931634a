"""launch/multinode.sh as two simulated nodes on 127.0.0.1 (node ranks 0 and 1, one CPU rank each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fusionrec.trainer.strategy import free_port

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch" / "multinode.sh"


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


@pytest.mark.unit
def test_multinode_script_rejects_bad_flags_and_builds_commands(tmp_path: Path) -> None:
    run = lambda *a: subprocess.run(["bash", str(SCRIPT), *a], capture_output=True, text=True, env=_env())  # noqa: E731
    bad = run("--node_rank", "0", "--nnodes", "2", "--", "x.py")
    assert bad.returncode == 2 and "--master_addr is required" in bad.stderr
    assert (
        "must be < --nnodes 2"
        in run("--node_rank", "2", "--nnodes", "2", "--master_addr", "h", "--", "x.py").stderr
    )
    assert "unknown option '--nodes'" in run("--nodes", "2", "--", "x.py").stderr
    assert "hostfile not found" in run("--hostfile", str(tmp_path / "nope"), "--", "x.py").stderr
    dry = run(
        "--hostfile",
        str(REPO / "launch/hostfile.example"),
        "--master_addr",
        "10.0.0.1",
        "--dry_run",
        "--",
        "-m",
        "pkg.mod",
        "--lr",
        "1",
    )
    assert dry.returncode == 0, dry.stderr
    assert (
        "--hostfile" in dry.stdout
        and "--master_addr 10.0.0.1" in dry.stdout
        and "--module pkg.mod --lr 1" in dry.stdout
    )
    assert "--no_ssh" not in dry.stdout


@pytest.mark.distributed
def test_two_simulated_nodes_train_as_one_job(tmp_path: Path) -> None:
    port = str(free_port())
    out = tmp_path / "out"
    procs = []
    for node_rank in (0, 1):
        cmd = [
            "bash",
            str(SCRIPT),
            "--nnodes",
            "2",
            "--node_rank",
            str(node_rank),
            "--nproc_per_node",
            "1",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            port,
            "--",
            "-m",
            "fusionrec.trainer.modules.toy",
            "--out",
            str(out),
            "--zero-stage",
            "2",
            "--steps",
            "6",
        ]
        log = (tmp_path / f"node{node_rank}.log").open("w")
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=tmp_path))
    try:
        codes = [p.wait(timeout=420) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    logs = "\n".join((tmp_path / f"node{i}.log").read_text()[-3000:] for i in (0, 1))
    assert codes == [0, 0], logs
    r0, r1 = (json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2  # one job of two ranks, not two 1-rank jobs
    assert (r0["node_env"]["RANK"], r1["node_env"]["RANK"]) == ("0", "1")
    assert r0["node_env"]["LOCAL_RANK"] == r1["node_env"]["LOCAL_RANK"] == "0"  # one process per "node"
    assert r0["fingerprint"] == r1["fingerprint"]  # weights synced across the two nodes
    assert r0["losses"] == r1["losses"] and len(r0["losses"]) == 6
    assert r0["losses"][-1] < r0["losses"][0]
