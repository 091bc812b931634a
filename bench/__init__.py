"""Benchmarks: `bench/<name>.py` with `run(quick=False) -> list[dict]`, printed by `fusionrec bench NAME`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC
from pathlib import Path


def find_shared(relative: str) -> Path | None:
    """`<shared>/<relative>` of the read-only ../shared folder (real data, tokenizer), or None if absent.

    Looked up in $FUSIONREC_SHARED_DIR, beside the repository, then /work/shared (the build machine).
    """
    for cand in (
        os.environ.get("FUSIONREC_SHARED_DIR"),
        Path(__file__).resolve().parents[2] / "shared",
        "/work/shared",
    ):
        if cand and (Path(cand) / relative).exists():
            return Path(cand) / relative
    return None


def provenance() -> dict:
    """Where a benchmark line was measured: commit (+dirty), UTC date, CPU model and count, torch threads,
    1-minute load average (a busy machine makes timings meaningless)."""
    import platform
    import subprocess
    from datetime import datetime

    root = Path(__file__).resolve().parents[1]
    git = ["git", "-C", str(root)]
    commit = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = bool(subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True).stdout.strip())  # fmt: skip
    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "")
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:
        threads = None
    return {"commit": commit + ("-dirty" if dirty else ""), "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "hardware": f"{cpu or platform.machine()} x{os.cpu_count()}", "threads": threads,
            "load_avg": round(os.getloadavg()[0], 2), "command": command()}  # fmt: skip


def command() -> str:
    """The command line of this process as a user types it (`python -m fusionrec.bench.NAME ...` for a bench)."""
    import shlex

    script, args = Path(sys.argv[0]), sys.argv[1:]
    bench_dir = Path(__file__).resolve().parent
    if script.suffix == ".py" and script.resolve().parent == bench_dir:
        head = ["python", "-m", f"fusionrec.bench.{script.stem}"]
    else:
        head = [script.name]
    return shlex.join(head + args)


def _cpuinfo() -> list[str]:
    path = Path("/proc/cpuinfo")
    return path.read_text().splitlines() if path.is_file() else []


def record(lines: list[dict], path: str | Path) -> Path:
    """Append benchmark lines to a committed JSONL file (rewritten atomically: old lines + new)."""
    import json

    from fusionrec.fileio import atomic_write_text

    path = Path(path)
    old = path.read_text() if path.is_file() else ""
    atomic_write_text(path, old + "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))
    return path


def cli_parser(doc: str, quick_help: str = "smoke run: smaller inputs") -> argparse.ArgumentParser:
    """The command line every `python -m fusionrec.bench.NAME` shares (--quick, --record); the module adds
    its own options."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--record", default="", help="also append the lines to this JSONL file")
    return parser


def emit(lines: list[dict], record_path: str = "") -> None:
    """Print the lines as JSON (one per line) and, given a path, append them to that committed JSONL file."""
    for line in lines:
        print(json.dumps(line), flush=True)
    if record_path:
        record(lines, record_path)
