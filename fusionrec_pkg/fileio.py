"""The one atomic writer every layer uses (results, manifests, run metadata, plots, exported folders).

Written to a unique temp name beside the target and renamed: a reader never sees half a file, and a crash
leaves the previous version (or nothing), never a truncated one that looks complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_target(path: str | Path) -> Iterator[Path]:
    """A temp path beside ``path`` for a writer that needs a file name (savefig, json.dump to a file);
    renamed over ``path`` when the block finishes, removed when it raises. Keeps the suffix (formats)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_target(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def replace_folders(tmp_root: str | Path, out: str | Path, names: list[str]) -> dict[str, Path]:
    """Rename each finished ``tmp_root/<name>`` over ``out/<name>`` (a reader never sees a half-written one);
    returns {name without suffix: final path}. ``tmp_root`` must be on the same filesystem as ``out``."""
    written = {}
    for name in names:
        target = Path(out) / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(Path(tmp_root) / name, target)
        written[Path(name).stem] = target
    return written
