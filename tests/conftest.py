"""Shared pytest fixtures: where the real benchmark data lives, GPU skipping, thread limits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# One thread per process: on a 2-core machine oversubscription makes distributed tests 30x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

REPO_ROOT = Path(__file__).resolve().parents[1]


def find_shared_dir() -> Path | None:
    """The read-only `shared/` folder (real data, tokenizer) beside the repo, if this machine has one."""
    candidates = [os.environ.get("FUSIONREC_SHARED_DIR"), REPO_ROOT.parent / "shared", "/work/shared"]
    for cand in candidates:
        if cand and (Path(cand) / "data").is_dir():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    d = find_shared_dir()
    if d is None:
        pytest.skip("../shared (real benchmark data) is not on this machine; set FUSIONREC_SHARED_DIR")
    return d


@pytest.fixture(scope="session")
def shared_data(shared_dir: Path) -> Path:
    return shared_dir / "data"


@pytest.fixture(scope="session")
def t5_tokenizer_dir(shared_dir: Path) -> Path:
    d = shared_dir / "assets" / "t5-tokenizer"
    if not (d / "tokenizer.json").exists():
        pytest.skip(f"real T5 tokenizer not found at {d}")
    return d


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing means no GPU either
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
