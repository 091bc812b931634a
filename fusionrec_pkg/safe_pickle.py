"""Checkpoint files are data, never code: every ``torch.load`` in a fusionrec process runs weights-only.

A ``.pt`` file is a pickle, and an unrestricted unpickler runs whatever the file tells it to. DeepSpeed calls
``torch.load(..., weights_only=False)`` in its own checkpoint readers (``load_checkpoint``, ``zero_to_fp32``,
``ds_to_universal``), so checking our own calls is not enough. torch honours ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1``
over an explicit ``weights_only=False``; :func:`force_weights_only` sets it when the ``fusionrec`` package is
imported, so it holds in every process that runs our code - the launcher, every rank (torchrun, deepspeed,
multinode.sh, Ray Train workers inherit it or import us), Ray actors (they import fusionrec) and subprocesses
(they inherit the environment).

Weights-only loading refuses every global that torch does not know, so the few DeepSpeed types that real
checkpoints hold (measured on ZeRO-0/1/2/3, fp32/bf16, optimizer offload) are allow-listed by name in
:data:`ALLOWED_GLOBALS`; the strategy registers the classes themselves (it is the one module that imports
DeepSpeed). :func:`check_pickle` scans a file's pickle for other globals *before* anything loads it, so a
crafted file is refused with a message naming it rather than torch's generic unpickling error.

``COMPLETE.json`` gives integrity (sizes, sha256), not authenticity: whoever can write the checkpoint folder
can rewrite the marker too. What keeps a crafted checkpoint from running code is this module.
"""

from __future__ import annotations

import os
from pathlib import Path

FORCE_ENV = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_NO_FORCE_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"  # torch raises when both are set

# Exactly the non-torch globals that DeepSpeed 0.19's checkpoints pickle (ZeRO-1/2/3 optimizer files).
ALLOWED_GLOBALS = frozenset(
    {
        "deepspeed.runtime.fp16.loss_scaler.LossScaler",
        "deepspeed.runtime.zero.config.ZeroStageEnum",
        "deepspeed.utils.tensor_fragment.fragment_address",
    }
)


class UnsafePickleError(ValueError):
    """A checkpoint file that references code a checkpoint never holds; the message names the file."""


def force_weights_only() -> None:
    """Make every later ``torch.load`` of this process and of its children weights-only."""
    os.environ[FORCE_ENV] = "1"
    os.environ.pop(_NO_FORCE_ENV, None)


def check_pickle(path: str | Path) -> None:
    """Raise :class:`UnsafePickleError` if ``path`` is not a torch zip file or names a global outside
    torch's weights-only set and :data:`ALLOWED_GLOBALS`. Reads only the pickle, not the tensor data."""
    import torch

    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as err:  # noqa: BLE001 - legacy (non-zip) pickles and garbage alike are refused
        raise UnsafePickleError(
            f"{path}: not a torch checkpoint file that can be checked ({type(err).__name__}: {err}); refusing "
            "to load it"
        ) from None
    unknown = sorted(set(found) - ALLOWED_GLOBALS)
    if unknown:
        raise UnsafePickleError(
            f"{path}: references {', '.join(unknown[:5])}, which no fusionrec checkpoint holds (a crafted or "
            "foreign file: loading it could run code); refusing to load it"
        )


def check_pickles(folder: str | Path) -> None:
    """:func:`check_pickle` on every ``*.pt`` file under ``folder`` (listed in a marker or not)."""
    for path in sorted(Path(folder).rglob("*.pt")):
        check_pickle(path)
