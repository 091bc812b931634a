"""The one atomic small-file writer every layer uses (results, manifests, run metadata).

Written to a unique temp name beside the target and renamed: a reader never sees half a file, and a crash
leaves the previous version (or nothing), never a truncated one that looks complete.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def replace_folders(tmp_root: str | Path, out: str | Path, names: list[str]) -> dict[str, Path]:
    """Rename each finished ``tmp_root/<name>`` over ``out/<name>`` (a reader never sees a half-written one);
    returns {name without suffix: final path}. ``tmp_root`` must be on the same filesystem as ``out``."""
    import shutil

    written = {}
    for name in names:
        target = Path(out) / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(Path(tmp_root) / name, target)
        written[Path(name).stem] = target
    return written
