"""Diverse ID generation (Algorithm 1) spread over Ray actors: the jobs run on the actors, the walk stays here.

Each actor loads the checkpoint's ID generator once and runs whole jobs (one attempt number, a chunk of
items; `trainer/idgen/candidates.py`). A job's candidates depend only on the job, so 1 actor and N actors give
the same table, and with a `CandidateStore` a killed run resumes where it stopped. Collisions are resolved
centrally, by the walk in reference order (`trainer/idgen/generator.py`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .ray_local import RayConfig, init_ray


@dataclass
class IDGenPoolConfig:
    """`[zeroshot.idgen_pool]`: where the held-out items' Algorithm-1 jobs run."""

    num_actors: int = 0  # 0 = on the driver, in this process
    num_cpus_per_actor: float = 1.0
    inflight_per_actor: int = 2  # jobs queued per actor (hides the driver's round trips)

    def __post_init__(self) -> None:
        if self.num_actors < 0 or self.num_cpus_per_actor <= 0 or self.inflight_per_actor < 1:
            raise ValueError(
                f"idgen_pool: num_actors={self.num_actors} must be >= 0, num_cpus_per_actor="
                f"{self.num_cpus_per_actor} > 0, inflight_per_actor={self.inflight_per_actor} >= 1"
            )


class IDGenWorker:
    """A Ray actor: the checkpoint's ID generator and the items' texts, running jobs on request."""

    def __init__(self, checkpoint: str, idgen: Any, texts: Mapping[str, str], threads: int):
        import torch

        from ..trainer.idgen.candidates import LocalGenerator
        from .checkpoint_io import load_id_generator

        torch.set_num_threads(max(1, threads))
        model, tokenizer = load_id_generator(checkpoint)
        self.source = LocalGenerator(model, tokenizer, idgen, texts)

    def run(self, attempt: int, keys: Sequence[str]) -> list:
        return self.source.run(attempt, keys)


class RayIDGenRunner:
    """A `Runner` (see candidates.py) over Ray actors; use as a context manager (actors are killed on exit)."""

    def __init__(self, checkpoint: str | Path, idgen: Any, texts: Mapping[str, str], cfg: IDGenPoolConfig,
                 ray_cfg: RayConfig | None = None):  # fmt: skip
        import ray

        init_ray(ray_cfg)
        threads = max(1, int(cfg.num_cpus_per_actor))
        cls = ray.remote(IDGenWorker).options(num_cpus=cfg.num_cpus_per_actor, max_restarts=0)
        texts_ref = ray.put(dict(texts))
        self.actors = [cls.remote(str(checkpoint), idgen, texts_ref, threads) for _ in range(cfg.num_actors)]
        self.inflight = cfg.inflight_per_actor

    def __enter__(self) -> RayIDGenRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)

    def __call__(self, jobs: Sequence[tuple[int, tuple[str, ...]]]) -> Iterator[tuple[int, list]]:
        """Jobs go to the least-busy actor; results are yielded as they finish (the caller persists each)."""
        import ray

        queue = list(range(len(jobs)))[::-1]
        busy: dict[Any, tuple[int, int]] = {}  # future -> (actor slot, job)
        load = [0] * len(self.actors)

        def submit() -> None:
            while queue and min(load) < self.inflight:
                slot = load.index(min(load))
                j = queue.pop()
                busy[self.actors[slot].run.remote(*jobs[j])] = (slot, j)
                load[slot] += 1

        submit()
        while busy:
            [fut], _ = ray.wait(list(busy), num_returns=1)
            slot, j = busy.pop(fut)
            load[slot] -= 1
            result = ray.get(fut)  # an actor's error (bad checkpoint, OOM) surfaces here, with its traceback
            submit()
            yield j, result

