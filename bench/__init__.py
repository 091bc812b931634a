"""Benchmarks: `bench/<name>.py` with `run(quick=False) -> list[dict]`, printed by `fusionrec bench NAME`."""

from __future__ import annotations

import os
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
