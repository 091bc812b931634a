"""Atomic, verifiable, resumable checkpoints: ``RUN/checkpoints/step-N/``.

Layout of one checkpoint::

    step-N/
      <engine>/...            DeepSpeed save_checkpoint of each trainable engine (model, optimizer, scheduler)
      weights/<engine>.safetensors  each trained engine's consolidated weights (read without DeepSpeed)
      trainer_state.pt        step/phase counters, module state (ID tables), engine param shapes, world size
      rank-00000.pt ...       per rank: RNG (python, numpy, torch) and loader state
      config.json             the resolved TrainConfig
      COMPLETE.json           written last: file sizes (+ sha256 of the small files); no marker = ignored

Writing is atomic: every rank writes into ``.step-N.tmp``; after a barrier rank 0 writes the marker and
renames the folder (rename is atomic on one filesystem). Loading checks the marker, sizes, hashes and every
parameter shape on rank 0 and broadcasts the verdict, so all ranks raise the same clear
``CheckpointError`` before any training step. Every ``.pt`` file is loaded weights-only (DeepSpeed's own
reads too) and scanned first for code references (fusionrec/safe_pickle.py): ``COMPLETE.json`` gives
integrity, not authenticity - anyone who can write the folder can rewrite the marker.

Resuming on another world size (saved by 2 ranks, resumed by 1 or 3: users get whatever nodes are free):

* Engines: DeepSpeed re-partitions the optimizer (``DeepspeedStrategy.load_resharded``: ZeRO-1/2/3 through a
  universal checkpoint converted into ``RUN/checkpoints/.reshard-step-N/`` and deleted after loading;
  stage 0 loads as is). Weights, Adam moments and step counts, LR scheduler: as saved.
* Loader: every saved rank's loader state is merged (the union of the consumed positions; padding
  counts dropped) and the loader deals the rest of the epoch to the new ranks, so every remaining sample
  of the epoch is seen exactly once (length-bucketing windows included, see trainer/bucketing.py). A
  loader whose state cannot be merged (per-rank cursors) is refused with a CheckpointError.
* RNG: per-rank python/numpy/torch streams cannot be re-split; each new rank is reseeded from
  (seed, step, new rank) and a warning says so. Losses are then not bit-identical to an uninterrupted
  run (dropout masks etc. differ); exactly-once still holds. The global batch is micro x accum x the new
  world size: scale ``train.deepspeed.grad_accum`` to keep it.

Multi-node note: the tmp-dir + rename protocol needs ``RUN`` on a filesystem shared by all nodes.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from fusionrec.data_pipeline.loader import merge_states
from fusionrec.fileio import atomic_write_text
from fusionrec.trainer.bucketing import elastic_state
from fusionrec.trainer.checkpoint_reader import (
    FORMAT_VERSION,
    HASH_LIMIT,
    MARKER,
    TRAINER_STATE,
    WEIGHTS_DIR,
    CheckpointError,
    list_checkpoints,
    load_weights,
    read_file,
    sha256_file,
    verify_checkpoint,
)

if TYPE_CHECKING:
    from fusionrec.trainer.loop import Trainer

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- save
def save_checkpoint(trainer: Trainer) -> Path:
    """Collective: every rank calls it. Returns the final ``step-N`` path."""
    strategy, step = trainer.strategy, trainer.state.step
    root = trainer.checkpoint_root
    final, tmp = root / f"step-{step}", root / f".step-{step}.tmp"
    if strategy.is_rank0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    strategy.barrier()
    for name, engine in sorted(trainer.engines.items()):
        if engine.has_optimizer:  # frozen engines are rebuilt by configure(); nothing to save
            strategy.save(engine, tmp)
            _save_weights(strategy, engine, tmp / WEIGHTS_DIR / f"{name}.safetensors")
    torch.save(_rank_state(trainer), tmp / f"rank-{strategy.rank:05d}.pt")
    strategy.barrier()
    if strategy.is_rank0:
        torch.save(_trainer_state(trainer), tmp / TRAINER_STATE)
        (tmp / "config.json").write_text(json.dumps(trainer.cfg.to_dict(), indent=2, default=str))
        _write_marker(tmp, step, strategy.world_size)
        if final.exists():  # re-save of the same step (e.g. at a phase end): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _prune(root, trainer.cfg.checkpoint.keep_last)
    strategy.barrier()
    return final


def _save_weights(strategy: Any, engine: Any, file: Path) -> None:
    """Collective: the engine's consolidated weights, read back by checkpoint_reader without DeepSpeed."""
    from safetensors.torch import save_file

    weights, contents = strategy.consolidated_weights(engine)
    if weights is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        save_file(weights, str(file), metadata={"contents": contents, "engine": engine.name})


def _trainer_state(trainer: Trainer) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "state": trainer.state.to_dict(),
        "module": trainer.module.state_dict(),
        "shapes": {name: e.named_shapes() for name, e in sorted(trainer.engines.items())},
        "world_size": trainer.strategy.world_size,
        "phases": [p.name for p in trainer.phases],
    }


def _rank_state(trainer: Trainer) -> dict[str, Any]:
    np_state = np.random.get_state()
    loader = trainer.train_loader
    return {
        "python_rng": random.getstate(),
        # numpy's state holds an ndarray, which weights_only loading refuses: store it as a tensor.
        "numpy_rng": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch_rng": torch.get_rng_state(),
        "loader": loader.state_dict() if hasattr(loader, "state_dict") else None,
    }


def _write_marker(tmp: Path, step: int, world_size: int) -> None:
    files = {}
    for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
        size = f.stat().st_size
        meta: dict[str, Any] = {"bytes": size}
        if size <= HASH_LIMIT:
            meta["sha256"] = sha256_file(f)
        files[str(f.relative_to(tmp))] = meta
    marker = {"format_version": FORMAT_VERSION, "step": step, "world_size": world_size, "files": files}
    (tmp / MARKER).write_text(json.dumps(marker, indent=1))


def _prune(root: Path, keep_last: int) -> None:
    for _, path in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------- load
def load_checkpoint(trainer: Trainer, path: Path) -> dict[str, Any]:
    """Collective. Verifies (rank 0, verdict broadcast), restores engines, module and counters.

    Returns this rank's RNG/loader state; the Trainer applies it after the phase's ``on_phase_start``.
    On another world size than the saving run's, that state is the merged loader state of every saved rank
    plus a reseed instruction (see the module docstring).
    """
    strategy = trainer.strategy
    error, saved_world = None, None
    if strategy.is_rank0:
        try:
            saved_world = _check_compatible(trainer, path)
        except CheckpointError as err:
            error = str(err)
    error, saved_world = strategy.broadcast_object((error, saved_world))
    if error is not None:
        raise CheckpointError(error)
    state = read_file(path / TRAINER_STATE)
    if saved_world == strategy.world_size:
        rank_state = read_file(path / f"rank-{strategy.rank:05d}.pt")
    else:  # before the engines: a loader that cannot be re-split fails without touching them
        rank_state = _elastic_rank_state(trainer, path, saved_world, int(state["state"]["step"]))
    _load_engines(trainer, path, saved_world)
    trainer.module.load_state_dict(state["module"])
    st = state["state"]
    for key, value in st.items():
        setattr(trainer.state, key, dict(value) if key == "skipped" else value)
    return rank_state


def _load_engines(trainer: Trainer, path: Path, saved_world: int) -> None:
    strategy = trainer.strategy
    scratch = trainer.checkpoint_root / f".reshard-{path.name}"
    for _, engine in sorted(trainer.engines.items()):
        if not engine.has_optimizer:
            continue
        if saved_world == strategy.world_size:
            strategy.load(engine, path)
            continue
        try:
            strategy.load_resharded(engine, path, saved_world, scratch)
        except ValueError as err:
            raise CheckpointError(str(err)) from None
    if saved_world != strategy.world_size and strategy.is_rank0:
        shutil.rmtree(scratch, ignore_errors=True)


def _elastic_rank_state(trainer: Trainer, path: Path, saved_world: int, step: int) -> dict[str, Any]:
    """Merged loader state of all ``saved_world`` ranks + the (seed, step, rank) to reseed from."""
    rank, world = trainer.strategy.rank, trainer.strategy.world_size
    saved = [read_file(path / f"rank-{r:05d}.pt").get("loader") for r in range(saved_world)]
    try:
        loader = merge_loader_states(saved)
    except ValueError as err:
        raise CheckpointError(
            f"checkpoint {path}: saved by {saved_world} ranks, resuming on {world}: {err}"
        ) from None
    if rank == 0:
        log.warning(
            "resuming %s (saved by %d ranks) on %d ranks: loader states merged, the rest of the epoch "
            "re-dealt (each sample still seen once); per-rank RNG streams cannot be re-split, so every rank "
            "is reseeded from (seed=%d, step=%d, rank): losses will not be bit-identical to an "
            "uninterrupted run",
            path,
            saved_world,
            world,
            trainer.cfg.seed,
            step,
        )
    return {"reseed": [int(trainer.cfg.seed), step, rank], "loader": loader}


def merge_loader_states(states: Sequence[Any]) -> Any:
    """One train-loader state for a new world size from every saved rank's (ValueError if impossible).

    ShardLoader states merge by union of consumed positions (``merge_states``), length-bucketing states
    through ``bucketing.elastic_state``; an epoch-only state (no progress inside an epoch) is the same on
    every rank and kept; other loaders keep per-rank cursors that have no merge.
    """
    if all(s is None for s in states):
        return None
    first = states[0]
    if not all(isinstance(s, Mapping) for s in states):
        raise ValueError("some ranks saved no loader state")
    if "bucket_window" in first:
        return elastic_state(states)
    if {"consumed", "deal", "ranks"} <= first.keys():
        return merge_states(states)
    if first.keys() == {"epoch"} and all(s == first for s in states):
        return dict(first)  # epoch-granular (llm EpochBatches): any resume restarts an epoch on any world
    raise ValueError(
        f"the train loader's state (keys {sorted(first)}) is per rank and cannot be re-split; resume on the "
        "saving world size"
    )


def _check_compatible(trainer: Trainer, path: Path) -> int:
    """Marker, sizes, hashes and parameter shapes; returns the world size the checkpoint was saved with."""
    marker = verify_checkpoint(path)
    state = read_file(path / TRAINER_STATE)
    for name, engine in sorted(trainer.engines.items()):
        if not engine.has_optimizer:
            continue
        saved = state["shapes"].get(name)
        if saved is None:
            raise CheckpointError(
                f"checkpoint {path}: has no engine {name!r} (has {sorted(state['shapes'])})"
            )
        _check_shapes(path, name, saved, engine.named_shapes())
    return int(marker["world_size"])


def _check_shapes(
    path: Path, name: str, saved: Mapping[str, list[int]], current: Mapping[str, list[int]]
) -> None:
    missing, extra = sorted(set(current) - set(saved)), sorted(set(saved) - set(current))
    if missing or extra:
        raise CheckpointError(
            f"checkpoint {path}: engine {name!r} parameters differ: not in checkpoint {missing[:5]}, "
            f"not in model {extra[:5]}"
        )
    for pname, shape in current.items():
        if list(saved[pname]) != list(shape):
            raise CheckpointError(
                f"checkpoint {path}: engine {name!r} parameter {pname} has shape {list(saved[pname])} in the "
                f"checkpoint but {list(shape)} in the model (different model config?)"
            )


def restore_rank_state(trainer: Trainer, rank_state: Mapping[str, Any]) -> None:
    """RNG and loader state of this rank (called by the Trainer after the phase rebuilt its loader)."""
    if "reseed" in rank_state:  # resumed on another world size
        reseed(*rank_state["reseed"])
    else:
        py = rank_state["python_rng"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        kind, keys, *rest = rank_state["numpy_rng"]
        np.random.set_state((kind, keys.numpy(), *rest))
        torch.set_rng_state(rank_state["torch_rng"])
    loader_state = rank_state.get("loader")
    if loader_state is not None:
        if not hasattr(trainer.train_loader, "load_state_dict"):
            raise CheckpointError("checkpoint holds loader state but the train loader has no load_state_dict")
        trainer.train_loader.load_state_dict(loader_state)


def reseed(seed: int, step: int, rank: int) -> None:
    """Seed python, numpy and torch for ``rank`` as a pure function of (seed, step, rank)."""
    words = np.random.SeedSequence([seed % 2**32, step, rank]).generate_state(2)  # two uint32
    value = int(words[0]) << 32 | int(words[1])
    random.seed(value)
    np.random.seed(words)
    torch.manual_seed(value)


# ---------------------------------------------------------------------- export
def export(checkpoint: Path, out_dir: Path, models: Mapping[str, Any]) -> dict[str, Path]:
    """Write each engine of ``checkpoint`` as an HF ``save_pretrained`` folder ``out_dir/<name>``.

    ``models`` maps engine names to freshly built models of the same config (the recipe builds them);
    weights are consolidated in-process from any ZeRO stage, loaded strictly (a shape mismatch raises),
    and saved with save_pretrained (safetensors; tied embeddings handled by transformers). The module
    state (ID tables) goes to ``out_dir/module_state.json`` when JSON-serialisable.
    """
    verify_checkpoint(checkpoint)
    state = read_file(checkpoint / TRAINER_STATE)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, model in sorted(models.items()):
        if name not in state["shapes"]:
            raise CheckpointError(
                f"checkpoint {checkpoint}: no engine {name!r} (has {sorted(state['shapes'])})"
            )
        current = {n: list(p.shape) for n, p in model.named_parameters()}
        _check_shapes(checkpoint, name, state["shapes"][name], current)
        load_weights(model, checkpoint, name)
        tmp = out_dir / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp))
        shutil.rmtree(out_dir / name, ignore_errors=True)
        os.replace(tmp, out_dir / name)
        written[name] = out_dir / name
    _export_module_state(state["module"], out_dir)
    return written


def _assert_loaded(checkpoint: Path, name: str, model: Any, sd: Mapping[str, torch.Tensor]) -> None:
    """Every parameter must come from the checkpoint (directly or through a tie), none left at init."""
    params = dict(model.named_parameters())  # ties are de-duplicated here
    absent = [n for n in params if n not in sd]
    if absent:
        raise CheckpointError(f"checkpoint {checkpoint}: engine {name!r} lacks weights for {absent[:5]}")


def _export_module_state(module_state: Mapping[str, Any], out_dir: Path) -> None:
    if not module_state:
        return
    try:
        text = json.dumps(module_state, indent=1)
    except TypeError:
        return  # tensors in module state: they stay in the checkpoint
    atomic_write_text(out_dir / "module_state.json", text)
