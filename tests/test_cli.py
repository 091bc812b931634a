"""The `fusionrec` command line across module boundaries: help texts, synth -> prepare (one-dataset form,
real Ray Data) -> inspect against a pure-Python reference, determinism, atomic replace, bad input ending as
exit status 2 with one line on stderr, and a 2-rank `train toy` run.

Most calls go through `fusionrec.launch.cli.main([...])` in-process (importing the CLI's dependencies costs
~15 s per process on this machine); a few run the real console script where the process boundary itself is
what is checked (exit status, what lands on stdout/stderr).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds
from fusionrec.launch import commands  # noqa: F401  (heavy imports at collection, not inside a test)
from fusionrec.launch.cli import build_parser, main
from fusionrec.launch.config import load_config

FUSIONREC = Path(sys.executable).with_name("fusionrec")
ENV = dict(os.environ, OMP_NUM_THREADS="1")
SYNTH_ARGS = ["--categories", "Beauty", "--no-yelp", "--users", "60", "--items", "30", "--seed", "3"]
LOCAL = ["data.shards.engine=local", "data.shards.samples_per_shard=100"]
SPLITS = ("train", "valid", "test")


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith(f"fusionrec {command}: error: "), lines[0]
    return lines[0]


def hidden_leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def shard_hashes(corpus: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(corpus.glob("shard-*.tar"))}


# ----------------------------------------------------------------------------------------- reference
def reference_sequences(reviews: Path, k: int = 5) -> dict[str, list[str]]:
    """Pure-Python reading of a reviews_<Cat>_5.json.gz: keep each (user, item) pair's first review in
    (time, line) order, iterate the k-core until stable, time-sort each user's items."""
    rows = []
    with gzip.open(reviews, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f):
            rec = json.loads(line)
            rows.append((rec["unixReviewTime"], lineno, rec["reviewerID"], rec["asin"]))
    first: dict[tuple[str, str], tuple[int, int]] = {}
    for t, n, user, item in sorted(rows):
        first.setdefault((user, item), (t, n))
    pairs = set(first)
    while True:
        users, items = Counter(u for u, _ in pairs), Counter(i for _, i in pairs)
        kept = {(u, i) for u, i in pairs if users[u] >= k and items[i] >= k}
        if kept == pairs:
            break
        pairs = kept
    seqs: dict[str, list[tuple[tuple[int, int], str]]] = {}
    for u, i in pairs:
        seqs.setdefault(u, []).append((first[u, i], i))
    return {u: [i for _, i in sorted(v)] for u, v in seqs.items()}


def reference_samples(seqs: dict[str, list[str]], name: str, max_history: int = 50) -> Counter:
    out = Counter()
    for user, items in seqs.items():
        items = [f"{name}:{i}" for i in items]
        n = len(items)
        targets = [(t, "train") for t in range(1, n - 2)] + [(n - 2, "valid"), (n - 1, "test")]
        for t, split in targets:
            hist = tuple(items[max(0, t - max_history) : t])
            out[(f"{name}:{user}", split, hist, items[t])] += 1
    return out


# ----------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "raw"
    assert main(["synth", "--out", str(out), *SYNTH_ARGS]) == 0
    return out


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory) -> tuple[Path, Path]:
    """The same one-dataset prepare twice, both through the real Ray Data engine (the default)."""
    ray = pytest.importorskip("ray")
    started_here = not ray.is_initialized()
    root = tmp_path_factory.mktemp("prepared")
    outs = (root / "a", root / "b")
    try:
        for out in outs:
            argv = ["prepare", "--input", str(raw), "--format", "amazon2014", "--name", "beauty"]
            assert main([*argv, "--out", str(out), "data.shards.samples_per_shard=100"]) == 0
    finally:
        if started_here:
            ray.shutdown()
    return outs


# ----------------------------------------------------------------------------------------- help
def _subcommands() -> list[str]:
    (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
    return sorted(sub.choices)


@pytest.mark.unit
def test_subcommands_of_the_design_exist():
    assert {"synth", "prepare", "inspect", "train", "bench"} <= set(_subcommands())


@pytest.mark.unit
@pytest.mark.parametrize("sub", [None, *_subcommands()])
def test_help_of_the_console_script_and_every_subcommand(sub):
    argv = [str(FUSIONREC)] + ([sub] if sub else []) + ["--help"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: fusionrec{' ' + sub if sub else ''}")
    assert proc.stderr == ""


# ----------------------------------------------------------------------------------------- happy path
@pytest.mark.integration
def test_synth_prepare_inspect_json_equals_the_reference(raw, prepared, capsys):
    corpus = prepared[0]
    seqs = reference_sequences(raw / "reviews_Beauty_5.json.gz")
    lengths = [len(v) for v in seqs.values()]
    expected = {
        "users": len(seqs),
        "items": len({i for v in seqs.values() for i in v}),
        "interactions": sum(lengths),
        "samples": {"train": sum(n - 3 for n in lengths), "valid": len(seqs), "test": len(seqs)},
    }
    total = sum(expected["samples"].values())
    code, out, err = run_cli(capsys, "inspect", corpus, "--json")
    assert code == 0, err
    report = json.loads(out)
    # DESIGN.md's shape exactly: no other key at any level, integer counts.
    assert report == {"samples": total, "shards": math.ceil(total / 100), "datasets": {"beauty": expected}}
    counts = [report["samples"], report["shards"], *report["datasets"]["beauty"].values()]
    assert all(type(v) is int for v in counts[:5]) and all(type(v) is int for v in counts[5].values())
    # Every sample read back (webdataset) equals the reference leave-one-out, as a multiset.
    urls = [str(p) for p in sorted(corpus.glob("shard-*.tar"))]
    got = Counter()
    for s in wds.WebDataset(urls, shardshuffle=False):
        d = json.loads(s["json"])
        assert d["dataset"] == "beauty"
        got[(d["user"], d["split"], tuple(d["history"]), d["target"])] += 1
    assert got == reference_samples(seqs, "beauty")


@pytest.mark.integration
def test_inspect_text_output_verifies_and_reports(prepared, capsys):
    code, out, err = run_cli(capsys, "inspect", prepared[0])
    assert code == 0, err
    report = json.loads((prepared[0] / "manifest.json").read_text())
    ds = report["datasets"]["beauty"]
    lines = out.strip().splitlines()
    assert (
        lines[0] == f"{report['samples']:,} samples in {len(report['shards'])} shard(s) - all hashes verified"
    )
    assert (
        lines[1]
        .strip()
        .startswith(
            f"beauty: {ds['users']:,} users, {ds['items']:,} items, {ds['interactions']:,} interactions;"
        )
    )


@pytest.mark.integration
def test_prepare_twice_gives_byte_identical_shards(prepared):
    a, b = prepared
    assert shard_hashes(a) == shard_hashes(b) and len(shard_hashes(a)) > 1
    listed = [(s["name"], s["sha256"]) for s in json.loads((a / "manifest.json").read_text())["shards"]]
    assert listed == sorted(shard_hashes(a).items())
    # The resolved config beside the corpus is the one the CLI built (one-dataset form: no config file).
    assert load_config(a / "config.toml") == load_config(None, ["data.shards.samples_per_shard=100"])


@pytest.mark.integration
def test_rerun_over_an_existing_corpus_replaces_it_cleanly(raw, tmp_path, capsys):
    out = tmp_path / "corpus"
    argv = ["prepare", "--input", raw, "--format", "amazon2014", "--out", out, "data.shards.engine=local"]
    assert run_cli(capsys, *argv, "data.shards.samples_per_shard=40")[0] == 0
    many = shard_hashes(out)
    assert len(many) > 3
    code, _, err = run_cli(capsys, *argv, "data.shards.samples_per_shard=100000")
    assert code == 0, err
    assert list(shard_hashes(out)) == ["shard-000000.tar"]  # no stale shard of the first run survives
    assert "samples_per_shard = 100000" in (out / "config.toml").read_text()
    assert hidden_leftovers(tmp_path) == []
    assert run_cli(capsys, "inspect", out)[0] == 0


# ----------------------------------------------------------------------------------------- bad input
@pytest.mark.unit
def test_config_typo_is_one_line_naming_the_key(raw, tmp_path, capsys):
    argv = ["prepare", "--input", raw, "--format", "amazon2014", "--out", tmp_path / "o", "data.kcroe=5"]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    line = one_error_line(err, "prepare")
    assert "data.kcroe" in line and "did you mean 'data.kcore'" in line
    assert not (tmp_path / "o").exists()


def _break_line(reviews: Path, lineno: int) -> None:
    lines = gzip.decompress(reviews.read_bytes()).decode().splitlines()
    lines[lineno - 1] = lines[lineno - 1][:40]  # cut mid-object, as a truncated write would
    reviews.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0))


@pytest.mark.integration
def test_malformed_json_line_names_file_and_line_and_leaves_nothing(raw, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(raw, bad)
    _break_line(bad / "reviews_Beauty_5.json.gz", 7)
    out = tmp_path / "corpus"
    argv = ["prepare", "--input", bad, "--format", "amazon2014", "--out", out, *LOCAL]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    line = one_error_line(err, "prepare")
    assert f"{bad / 'reviews_Beauty_5.json.gz'}:7: malformed JSON" in line
    assert not out.exists() and hidden_leftovers(tmp_path) == []


@pytest.mark.integration
def test_failed_prepare_over_a_corpus_keeps_the_previous_one(raw, tmp_path, capsys):
    out = tmp_path / "corpus"
    assert run_cli(capsys, "prepare", "--input", raw, "--format", "amazon2014", "--out", out, *LOCAL)[0] == 0
    before = (out / "manifest.json").read_bytes(), shard_hashes(out)
    bad = tmp_path / "bad"
    shutil.copytree(raw, bad)
    _break_line(bad / "reviews_Beauty_5.json.gz", 3)
    code, _, err = run_cli(capsys, "prepare", "--input", bad, "--format", "amazon2014", "--out", out, *LOCAL)
    assert code == 2 and ":3: malformed JSON" in one_error_line(err, "prepare")
    assert ((out / "manifest.json").read_bytes(), shard_hashes(out)) == before
    assert hidden_leftovers(tmp_path) == []


@pytest.mark.unit
def test_missing_input_dir_is_named(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    argv = ["prepare", "--input", missing, "--format", "amazon2014", "--out", tmp_path / "o", *LOCAL]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and str(missing) in one_error_line(err, "prepare")
    assert not (tmp_path / "o").exists()


@pytest.mark.unit
def test_inspect_without_manifest_is_not_a_corpus(tmp_path, capsys):
    (tmp_path / "shard-000000.tar").write_bytes(b"\0" * 1024)
    code, out, err = run_cli(capsys, "inspect", tmp_path, "--json")
    assert code == 2 and out == ""
    assert f"{tmp_path / 'manifest.json'}: no manifest" in one_error_line(err, "inspect")


@pytest.mark.integration
def test_corrupted_shard_is_named(prepared, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    shutil.copytree(prepared[0], corpus)
    shard = corpus / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0x01  # inside the first member's JSON: same size, different bytes
    shard.write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "inspect", corpus, "--json")
    assert code == 2
    assert f"{shard}: shard bytes/sha256 differ" in one_error_line(err, "inspect")


# ----------------------------------------------------------------------------------------- real process
@pytest.mark.integration
def test_console_script_exit_status_and_stderr_on_failure(tmp_path):
    proc = subprocess.run(
        [str(FUSIONREC), "inspect", str(tmp_path)], capture_output=True, text=True, env=ENV, timeout=300
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"fusionrec inspect: error: {tmp_path / 'manifest.json'}: no manifest: " + (
        "not a corpus (missing, or a failed/interrupted prepare)"
    )


@pytest.mark.integration
def test_console_script_inspect_json_stdout_is_one_json_object(prepared):
    proc = subprocess.run(
        [str(FUSIONREC), "inspect", str(prepared[0]), "--json"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # the whole stdout: `fusionrec inspect OUT --json | jq` must work
    assert set(report) == {"samples", "shards", "datasets"}


# ----------------------------------------------------------------------------------------- train
@pytest.mark.distributed
def test_train_toy_two_ranks_writes_summary_config_checkpoint_and_events(tmp_path):
    run = tmp_path / "run"
    argv = [str(FUSIONREC), "train", "toy", "--nproc", "2", f"train.run_dir={run}", "train.max_steps=3"]
    proc = subprocess.run([*argv, "train.log_every=1"], capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["recipe"] == "toy" and summary["step"] == 3
    assert [log["step"] for log in summary["logs"]] == [1, 2, 3]
    assert all(math.isfinite(log["train/loss"]) for log in summary["logs"])
    assert summary["samples_seen"] == 3 * 2 * 8  # steps x ranks x default micro-batch
    cfg = load_config(run / "config.toml")
    assert (cfg.train.max_steps, cfg.train.run_dir, cfg.train.log_every) == (3, str(run), 1)

    ckpt = run / "checkpoints" / "step-3"
    assert (ckpt / "COMPLETE.json").is_file()
    assert sorted(p.name for p in ckpt.glob("rank-*.pt")) == ["rank-00000.pt", "rank-00001.pt"]
    assert list((run / "checkpoints").glob(".*")) == []  # no temp dir left behind

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (run / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    losses = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [s for s, _ in losses] == [1, 2, 3]
    assert [v for _, v in losses] == pytest.approx([log["train/loss"] for log in summary["logs"]], rel=1e-6)


def test_every_benchmark_module_is_a_command_with_run():
    """`fusionrec bench NAME` offers exactly the public bench/ modules, and each defines run(quick=...)."""
    import ast

    from fusionrec.launch.cli import BENCHMARKS

    folder = Path(__file__).resolve().parents[1] / "bench"
    on_disk = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))
    assert list(BENCHMARKS) == on_disk
    assert {"train", "ranker", "palr", "idgenrec_beauty"} <= set(BENCHMARKS)
    for name in BENCHMARKS:
        tree = ast.parse((folder / f"{name}.py").read_text())
        runs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run"]
        assert runs, f"bench/{name}.py has no run()"
        assert "quick" in [a.arg for a in runs[0].args.args], f"bench/{name}.py: run() takes no quick"


# ----------------------------------------------------------------------------------------- crashes
_CRASH = """
import sys
import torch

def broken_loss(pred, target):  # torch's own error from inside torch: (8, 4) @ (8, 4)
    return torch.mm(pred, target)

torch.nn.functional.mse_loss = broken_loss
from fusionrec.launch.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.integration
def test_a_crash_inside_torch_keeps_its_traceback_and_a_distinct_status(tmp_path):
    argv = ["train", "toy", f"train.run_dir={tmp_path / 'run'}", "train.max_steps=2", "train.progress=false"]
    env = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-c", _CRASH, *argv], capture_output=True, text=True, env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]  # not 2, the user-error status
    assert "Traceback (most recent call last)" in proc.stderr
    assert "RuntimeError: mat1 and mat2 shapes cannot be multiplied" in proc.stderr
    assert "fusionrec train: error:" not in proc.stderr


@pytest.mark.unit
def test_a_train_config_typo_is_still_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "toy", f"train.run_dir={tmp_path}", "train.max_stepz=3")
    assert code == 2 and "train.max_stepz" in one_error_line(err, "train")


@pytest.mark.unit
def test_user_errors_are_told_apart_from_crashes():
    from fusionrec.cluster.ray_train import RayTrainError, WorkerFailure
    from fusionrec.launch.cli import is_user_error
    from fusionrec.trainer.checkpoint import CheckpointError

    class Wrapped(RuntimeError):  # the shape of Ray's RayTaskError: the worker's exception as .cause
        def __init__(self, cause):
            super().__init__(str(cause))
            self.cause = cause

    assert is_user_error(CheckpointError("x")) and is_user_error(FileNotFoundError("y"))
    assert not is_user_error(RuntimeError("CUDA error")) and not is_user_error(KeyError("k"))
    user = RayTrainError("m", "toy", {0: Wrapped(ValueError("bad")), 1: ValueError("bad")})
    mixed = RayTrainError("m", "toy", {0: ValueError("bad"), 1: WorkerFailure("RuntimeError", "boom")})
    assert is_user_error(user) and not is_user_error(mixed)
    assert not is_user_error(RayTrainError("controller failed", "toy"))
