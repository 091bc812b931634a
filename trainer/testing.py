"""Real multi-process test harness: ``run_distributed_test(fn, world_size=2, backend="gloo", **kw)``.

Spawns ``world_size`` fresh interpreter processes (spawn context: no forked torch/gloo state), each with the
env vars every launcher sets (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT=a free
port, OMP_NUM_THREADS=1), calls ``fn(**kw)`` in each, and returns the per-rank return values in rank
order. An exception in any rank is re-raised in the caller with that rank's traceback; a hung rank fails
after ``timeout_s``. ``fn`` must be importable (a module-level function), as with any spawn target.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import traceback
from collections.abc import Callable
from typing import Any

import torch
from fusionrec.ports import free_port


class DistributedTestError(RuntimeError):
    """A rank of a distributed test failed; the message holds its traceback."""


def _worker(fn: Callable[..., Any], rank: int, env: dict[str, str], results: Any, kw: dict[str, Any]) -> None:
    os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        results.put((rank, True, fn(**kw)))
    except BaseException:  # report everything, including SystemExit from argparse-style code
        results.put((rank, False, traceback.format_exc()))
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def run_distributed_test(
    fn: Callable[..., Any],
    world_size: int = 2,
    backend: str = "gloo",
    timeout_s: float = 300.0,
    **kw: Any,
) -> list[Any]:
    """Run ``fn(**kw)`` on ``world_size`` real processes; return their results in rank order."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    env = {
        "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "OMP_NUM_THREADS": "1",
        "FUSIONREC_TEST_BACKEND": backend,
    }
    procs = [
        ctx.Process(target=_worker, args=(fn, r, env, results, kw), daemon=False) for r in range(world_size)
    ]
    for p in procs:
        p.start()
    try:
        collected = _collect(results, procs, world_size, timeout_s)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    return [collected[r] for r in range(world_size)]


def _collect(results: Any, procs: list[Any], world_size: int, timeout_s: float) -> dict[int, Any]:
    collected: dict[int, Any] = {}
    failures: list[str] = []
    remaining = timeout_s
    while len(collected) + len(failures) < world_size:
        try:
            rank, ok, value = results.get(timeout=min(5.0, remaining))
        except queue.Empty:
            remaining -= 5.0
            dead = [i for i, p in enumerate(procs) if not p.is_alive() and p.exitcode not in (0, None)]
            if dead and results.empty():
                raise DistributedTestError(
                    f"rank(s) {dead} died (exit codes {[procs[i].exitcode for i in dead]})"
                ) from None
            if remaining <= 0:
                raise DistributedTestError(f"distributed test timed out after {timeout_s}s") from None
            continue
        if ok:
            collected[rank] = value
        else:
            failures.append(f"--- rank {rank} ---\n{value}")
            # Other ranks are likely blocked in a collective waiting for the failed one: stop waiting.
            break
    if failures:
        raise DistributedTestError("\n".join(failures))
    return collected
