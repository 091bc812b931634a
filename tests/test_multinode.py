"""launch/multinode.sh as two simulated nodes on 127.0.0.1 (node ranks 0 and 1, one CPU rank each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fusionrec.ports import free_port

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


def _two_node_job(tmp_path: Path) -> None:
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
            "fusionrec.trainer.recipes.toy.module",
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


@pytest.mark.distributed
def test_two_simulated_nodes_train_as_one_job(tmp_path: Path) -> None:
    _two_node_job(tmp_path)


@pytest.mark.stress
@pytest.mark.parametrize("attempt", range(20))
def test_two_node_job_exits_cleanly_every_time(tmp_path: Path, attempt: int) -> None:
    """`pytest -m stress tests/test_multinode.py`: the two-node job 20 times in a row, every exit 0."""
    _two_node_job(tmp_path)


# ------------------------------------------------------------------------------------------ teardown
_TEARDOWN = """
import json, os, signal, sys, time
from fusionrec.trainer.config import DeepSpeedConfig
from fusionrec.trainer.strategy import DeepspeedStrategy

mode, out = sys.argv[1], sys.argv[2]
strategy = DeepspeedStrategy(DeepSpeedConfig(zero_stage=0, micro_batch_size=1, dist_timeout_s=5))
strategy.setup()
strategy.all_reduce(1.0)  # the group is up and used
rank = strategy.rank
if rank == 1:
    if mode == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "exited":
        os._exit(0)
    time.sleep(2.0)  # "slow": still working when rank 0 wants to leave
arrived = time.time()
strategy.teardown()
with open(f"{out}/rank{rank}.json", "w") as fh:
    json.dump({"arrived": arrived, "left": time.time()}, fh)
"""


def _teardown_pair(tmp_path: Path, mode: str) -> tuple[list[int], dict[int, dict], str]:
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        env = dict(_env(), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port)  # fmt: skip
        log = (tmp_path / f"rank{rank}.log").open("w")
        cmd = [sys.executable, "-c", _TEARDOWN, mode, str(tmp_path)]
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
    codes = [p.wait(timeout=120) for p in procs]
    out = {
        r: json.loads((tmp_path / f"rank{r}.json").read_text())
        for r in (0, 1)
        if (tmp_path / f"rank{r}.json").exists()
    }
    return codes, out, (tmp_path / "rank0.log").read_text()


@pytest.mark.distributed
def test_teardown_waits_for_a_slow_peer(tmp_path: Path) -> None:
    """Deterministic: rank 1 is still working when rank 0 reaches teardown. Rank 0 must not destroy its end
    of the group (and the rendezvous store it hosts) before rank 1 got there too."""
    codes, out, log0 = _teardown_pair(tmp_path, "slow")
    assert codes == [0, 0], log0[-2000:]
    assert out[0]["left"] >= out[1]["arrived"], "rank 0 left the group while rank 1 was still working"


@pytest.mark.distributed
@pytest.mark.parametrize("mode", ["killed", "exited"])
def test_teardown_after_the_peer_is_gone_exits_cleanly(tmp_path: Path, mode: str) -> None:
    """The peer is killed (or exits) before teardown: rank 0 leaves within the bound, with a warning, exit 0."""
    codes, out, log0 = _teardown_pair(tmp_path, mode)
    assert codes[0] == 0, log0[-2000:]
    assert "leaving" in log0 and "terminate called" not in log0
    assert out[0]["left"] - out[0]["arrived"] < 30
