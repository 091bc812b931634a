"""The Ray cluster launcher YAML and the KubeRay RayJob manifest: parse, required keys, and every command or
file they name exists in this repository (jobs.py commands, the `fusionrec` CLI, launch/ scripts)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest
import ray
import yaml
from fusionrec.cluster import jobs

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "cluster" / "configs"


def _cli_subcommands() -> dict[str, argparse.ArgumentParser]:
    from fusionrec.launch.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.fixture(scope="module")
def launcher() -> dict:
    return yaml.safe_load((CONFIGS / "ray-cluster.yaml").read_text())


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return yaml.safe_load((CONFIGS / "rayjob.yaml").read_text())


@pytest.mark.unit
def test_launcher_required_keys(launcher):
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "setup_commands"):
        assert key in launcher, key
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    assert launcher["provider"]["type"] in ("aws", "gcp", "azure", "kubernetes")
    gpu = [t for name, t in types.items() if name != launcher["head_node_type"]]
    assert gpu and all(t["node_config"]["InstanceType"].startswith(("g", "p")) for t in gpu)  # GPU instances
    assert sum(t["max_workers"] for t in gpu) <= launcher["max_workers"]


@pytest.mark.unit
def test_launcher_commands_refer_to_repo_files_and_bind_loopback(launcher):
    assert "." in launcher["file_mounts"].values()  # the repository itself is synced to the nodes
    setup = " ".join(launcher["setup_commands"])
    for token in shlex.split(setup.replace(";", " ").replace("&&", " ")):
        if token.startswith("launch/"):
            assert (REPO / token).exists(), token
    assert "launch/setup_venv.sh" in setup
    head = " ".join(launcher["head_start_ray_commands"])
    assert "--head" in head and "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=disabled" in head
    assert "--address=$RAY_HEAD_IP:6379" in " ".join(launcher["worker_start_ray_commands"])


@pytest.mark.unit
def test_rayjob_manifest_shape(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    assert spec["rayClusterSpec"]["rayVersion"] == ray.__version__  # the image runs the pinned Ray
    assert spec["shutdownAfterJobFinishes"] is True
    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert env["RAY_AUTH_MODE"] == "disabled" and env["HF_HUB_OFFLINE"] == "1"
    workers = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert workers and all(
        g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] for g in workers
    )
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"]
    }
    assert claims == {"fusionrec-data"}


@pytest.mark.unit
def test_rayjob_entrypoint_is_a_real_job_command(rayjob):
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "fusionrec.cluster.jobs"]
    command, args = argv[3], argv[4:]
    assert command in jobs.CLI_COMMANDS
    assert jobs.cli_command(command, args)[-len(args) - 1 :] == [command, *args]
    sub = _cli_subcommands()
    if command not in sub:
        pytest.skip(
            f"`fusionrec {command}` is not in the CLI yet (launch/cli.py); only the jobs wrapper was checked"
        )
    parsed = sub[command].parse_args(args)  # the flags are the CLI's own
    if getattr(parsed, "checkpoint", None):  # a path the run creates: the run dir (its newest checkpoint)
        assert "/checkpoints/" not in parsed.checkpoint and not parsed.checkpoint.endswith("latest")


@pytest.mark.unit
def test_jobs_cli_command_and_parser():
    with pytest.raises(ValueError, match="unknown job command"):
        jobs.cli_command("deploy", [])
    argv = jobs.cli_command("prepare", ["--config", "x.toml", "data.k_core=5"])
    assert argv[-4:] == ["prepare", "--config", "x.toml", "data.k_core=5"]
    args = jobs._parser().parse_args(["baseline", "--data", "d", "--out", "o", "--ks", "5", "10"])
    assert (args.model, args.ks, args.actors) == ("most_popular", [5, 10], 2)
