"""Reading a checkpoint: discovery, verification, trainer state, consolidated weights - never DeepSpeed.

Evaluation, export and zero-shot load trained models through this module only, in any process: a Ray actor,
a CPU laptop, a fresh interpreter without DeepSpeed installed. Every checkpoint written by this version holds
each trained engine's consolidated weights as ``weights/<engine>.safetensors`` (written at save time by
``checkpoint.save_checkpoint``), which need neither DeepSpeed nor a process group nor pickle to read.
Checkpoints written before that layout existed are still read: their weights are consolidated from the
DeepSpeed files (that fallback imports DeepSpeed, lazily, and only for them).

Verification (:func:`verify_checkpoint`) checks the marker, every file's size and the small files' sha256,
and scans every ``.pt`` pickle for code references (fusionrec/safe_pickle.py). ``COMPLETE.json`` gives
integrity, not authenticity: anyone who can write the folder can rewrite the marker.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from fusionrec.safe_pickle import UnsafePickleError, check_pickles

MARKER = "COMPLETE.json"
TRAINER_STATE = "trainer_state.pt"
FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step-(\d+)$")
HASH_LIMIT = 64 * 1024 * 1024  # sha256 for files up to 64 MiB (our small files); sizes for all
WEIGHTS_DIR = "weights"  # <engine>.safetensors: consolidated weights, written at save time


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names the path and the problem."""


# ---------------------------------------------------------------------- discovery
def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` (those with a marker), oldest first."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_RE.match(child.name)
        if m and (child / MARKER).is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


def resolve_resume(root: Path, resume: str | None) -> Path | None:
    """None -> fresh start; "auto" -> newest complete checkpoint (or fresh); else that path (must exist)."""
    if resume is None:
        return None
    if resume == "auto":
        found = list_checkpoints(root)
        return found[-1][1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint.resume: {path} is not a directory")
    return path


def resolve_checkpoint(path: str | Path, checkpoints_dir: str = "checkpoints") -> Path:
    """A checkpoint folder (holding the marker) as is; a run dir as its newest complete checkpoint."""
    src = Path(path).resolve()
    if not src.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {src}")
    if (src / MARKER).is_file() or _STEP_RE.match(src.name):
        return src  # an incomplete step-N is refused, with its reason, by verify_checkpoint
    found = list_checkpoints(src / checkpoints_dir)
    if not found:
        raise CheckpointError(
            f"{src}: neither a checkpoint (no {MARKER}) nor a run dir with a complete checkpoint under "
            f"{src / checkpoints_dir}"
        )
    return found[-1][1]


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check the marker, every listed file's size and the small files' sha256. Returns the marker."""
    marker_file = path / MARKER
    if not marker_file.is_file():
        raise CheckpointError(f"checkpoint {path}: incomplete (no {MARKER}); it was never finished")
    try:
        marker = json.loads(marker_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"checkpoint {path}/{MARKER}:{err.lineno}: corrupted marker ({err.msg})"
        ) from None
    if marker.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path}: format_version {marker.get('format_version')} != {FORMAT_VERSION}"
        )
    for rel, meta in marker["files"].items():
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path}: missing file {rel}")
        size = f.stat().st_size
        if size != meta["bytes"]:
            raise CheckpointError(
                f"checkpoint {path}: {rel} has {size} bytes, expected {meta['bytes']} (corrupted)"
            )
        if "sha256" in meta and sha256_file(f) != meta["sha256"]:
            raise CheckpointError(f"checkpoint {path}: {rel} sha256 mismatch (corrupted)")
    try:  # the marker proves integrity, not authenticity: no file may reference code
        check_pickles(path)
    except UnsafePickleError as err:
        raise CheckpointError(f"checkpoint {path}: {err}") from None
    return marker


# ---------------------------------------------------------------------- files
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_file(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file missing: {path}") from None
    except Exception as err:  # torch raises several types for truncated/garbled zips
        raise CheckpointError(f"checkpoint file {path} is unreadable ({type(err).__name__}: {err})") from None


def read_trainer_state(path: Path) -> dict[str, Any]:
    """``trainer_state.pt`` of a verified checkpoint (counters, module state, engine shapes)."""
    verify_checkpoint(path)
    return read_file(path / TRAINER_STATE)


def read_module_state(path: str | Path) -> dict[str, Any]:
    """The TrainModule's state (ID tables, tokenizer files, model configs) of a verified checkpoint."""
    return read_trainer_state(Path(path)).get("module") or {}


# ---------------------------------------------------------------------- weights
def weights_file(path: Path, engine: str) -> Path:
    return Path(path) / WEIGHTS_DIR / f"{engine}.safetensors"


def read_weights(path: str | Path, engine: str) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, contents) of ``engine``: contents is ``"full"`` (every parameter and buffer) or
    ``"trainable"`` (the engine had frozen parameters, e.g. a LoRA base: only the trained ones are stored).

    Checkpoints from before the ``weights/`` layout are consolidated from DeepSpeed's files (lazy import).
    """
    from safetensors import safe_open

    path = Path(path)
    file = weights_file(path, engine)
    if file.is_file():
        with safe_open(str(file), framework="pt") as fh:
            contents = (fh.metadata() or {}).get("contents", "full")
            return {k: fh.get_tensor(k) for k in fh.keys()}, contents
    if (path / WEIGHTS_DIR).is_dir():
        raise CheckpointError(f"checkpoint {path}: no weights for engine {engine!r} in {path / WEIGHTS_DIR}")
    from fusionrec.trainer.strategy import DeepspeedStrategy  # an older checkpoint: DeepSpeed's files

    try:
        return DeepspeedStrategy.consolidated_state_dict(path, engine), "full"
    except UnsafePickleError as err:
        raise CheckpointError(f"checkpoint {path}: {err}") from None


def load_weights(model: torch.nn.Module, path: str | Path, engine: str) -> torch.nn.Module:
    """Load ``engine``'s weights of the checkpoint into ``model`` (built from the run's config) and check
    that every parameter came from the checkpoint (full) or every trainable one did (trainable)."""
    weights, contents = read_weights(path, engine)
    names = dict(model.named_parameters())  # tied weights appear once here and may appear once in the file
    unknown = sorted(set(weights) - set(model.state_dict()))
    if unknown:
        raise CheckpointError(
            f"checkpoint {path}: engine {engine!r} has weights the model lacks ({unknown[:5]}); "
            "a different model config?"
        )
    model.load_state_dict(weights, strict=False)
    wanted = [n for n, p in names.items() if contents == "full" or p.requires_grad]
    absent = [n for n in wanted if n not in weights]
    if absent:
        raise CheckpointError(f"checkpoint {path}: engine {engine!r} lacks weights for {absent[:5]}")
    return model
