"""Distributed full-ranking / generative evaluation on a pool of Ray actors.

Any recommender plugs in through a `ScorerFactory`: a picklable callable that an actor calls *once* to load
its model (+ ID table + trie) from a checkpoint, returning a `Scorer` whose `rank(batch)` gives the top-k
item indices per user. Most-popular, SASRec and the generative models share this harness.

Guarantees (and how):
- Every user is evaluated exactly once: users are cut into fixed, contiguous *work units* (no drop_last);
  results are keyed by unit id, so a unit re-run after an actor died replaces, never adds.
- Exact merging: a unit's result is a `MetricSums` (an integer histogram of target ranks, from
  trainer/metrics.py); integer sums merge associatively, so 1 actor and N actors give bit-identical numbers. A scorer error (e.g. OOM) fails the run loudly; nothing retries with smaller beams or batches.
- Dead actors are replaced and their in-flight units re-queued (bounded retries).
- Resumable: each finished unit is written atomically to `<results_dir>/unit-XXXXXX.json`; a results
  directory is tied to a run fingerprint (scorer, data, unit layout) and refuses another run's units.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..fileio import atomic_write_text as _atomic_write
from ..trainer.metrics import MetricSums, target_ranks
from .evalset import EvalSet, Scorer, ScorerFactory, UserBatch  # noqa: F401  (Scorer: re-exported)
from .ray_local import RayConfig, init_ray
from .results import plot_results, results_csv, results_markdown, results_rows  # noqa: F401  (re-exported)

# ------------------------------------------------------------------------------------------------ config


@dataclass
class EvaluatorConfig:
    num_actors: int = 2  # 0 = in this process, without Ray (a machine with no Ray, e.g. a bare GPU image)
    unit_size: int = 512  # users per work unit (the unit of retry and of resume)
    batch_size: int = 256  # users per Scorer.rank call inside a unit
    ks: tuple[int, ...] = (5, 10, 20)
    num_cpus_per_actor: float = 1.0
    inflight_per_actor: int = 2  # queued units per actor, so an actor never idles between units
    max_unit_retries: int = 3  # per unit, for actor deaths only
    spread: bool = True  # SPREAD actors over nodes
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("unit_size", "batch_size", "inflight_per_actor"):
            if getattr(self, name) < 1:
                raise ValueError(f"eval.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_actors < 0:
            raise ValueError(f"eval.num_actors must be >= 0 (0 = in this process), got {self.num_actors}")
        if self.max_unit_retries < 0 or self.num_cpus_per_actor <= 0:
            raise ValueError(f"eval.max_unit_retries={self.max_unit_retries}, num_cpus_per_actor invalid")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"eval.ks must be positive cutoffs, got {self.ks}")
        self.ks = tuple(int(k) for k in self.ks)


@dataclass
class EvalResult:
    dataset: str
    metrics: dict[str, float]
    users: int
    seconds: float  # wall time of the whole call, including actor start-up and scorer loading
    load_seconds: float  # actor start-up + scorer loading (once per actor)
    users_per_s: float  # users evaluated in this call / time after the actors were ready
    units: int
    units_resumed: int
    units_retried: int
    actor_nodes: list[str]
    fingerprint: str
    skipped: dict[str, int]
    sums: MetricSums = field(repr=False)
    # each user's 0-based target rank in EvalSet order (-1 = not in the top-k): what paired comparisons of
    # two models on the same users resample (cluster.results.paired_difference)
    ranks: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=np.int32))

    def as_dict(self) -> dict[str, Any]:
        d = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("sums", "ranks")
        }
        return copy.deepcopy(d)


# ------------------------------------------------------------------------------------------------ actor


class EvalWorker:
    """Ray actor body: loads the scorer once, then ranks whole units of users."""

    def __init__(self, factory: ScorerFactory, data: EvalSet, batch_size: int, ks: tuple[int, ...]) -> None:
        self.scorer = factory()
        self.data = data
        self.batch_size = batch_size
        self.ks = ks
        self.depth = int(self.scorer.top_k)
        if self.depth < max(ks):
            raise ValueError(f"scorer top_k={self.depth} < largest cutoff {max(ks)}: HR@{max(ks)} undefined")

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def run_unit(self, unit: int, start: int, stop: int) -> tuple[int, MetricSums, list[int]]:
        parts, ranks = [], []
        for lo in range(start, stop, self.batch_size):
            hi = min(stop, lo + self.batch_size)
            batch = UserBatch(self.data.user_ids[lo:hi], [self.data.history(i) for i in range(lo, hi)])
            topk = torch.as_tensor(np.asarray(self.scorer.rank(batch), dtype=np.int64))
            if topk.shape != (hi - lo, self.depth):
                raise ValueError(
                    f"scorer returned shape {tuple(topk.shape)} for {hi - lo} users, top_k {self.depth}"
                )
            targets = torch.tensor(self.data.targets[lo:hi])
            parts.append(MetricSums.from_topk(topk, targets, self.ks))
            ranks += target_ranks(topk, targets).tolist()
        return unit, sum(parts), ranks


# ------------------------------------------------------------------------------------------------ resume


def _sums_to_json(sums: MetricSums) -> dict[str, Any]:
    return {
        "ks": list(sums.ks),
        "depth": sums.depth,
        "rank_counts": sums.rank_counts.tolist(),
        "misses": sums.misses,
    }


def _sums_from_json(rec: dict[str, Any]) -> MetricSums:
    return MetricSums(tuple(rec["ks"]), rec["depth"], None, np.asarray(rec["rank_counts"]), rec["misses"])


def run_fingerprint(data: EvalSet, scorer_desc: dict[str, Any], cfg: EvaluatorConfig) -> str:
    """What makes two runs interchangeable: data, scorer + checkpoint, unit layout (not the actor count)."""
    key = {
        "data": data.fingerprint(),
        "scorer": scorer_desc,
        "unit_size": cfg.unit_size,
        "batch_size": cfg.batch_size,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _load_units(results_dir: Path, fingerprint: str, n_units: int, bounds: list[tuple[int, int]]) -> dict:
    """Finished units from an earlier attempt of the *same* run; another run's directory is an error."""
    run_file = results_dir / "run.json"
    results_dir.mkdir(parents=True, exist_ok=True)
    if run_file.exists():
        saved = json.loads(run_file.read_text()).get("fingerprint")
        if saved != fingerprint:
            raise ValueError(
                f"{results_dir}: results directory belongs to another run (fingerprint {saved} != "
                f"{fingerprint}); use a fresh directory or delete it"
            )
    else:
        _atomic_write(run_file, json.dumps({"fingerprint": fingerprint, "units": n_units}))
    done = {}
    for path in sorted(results_dir.glob("unit-*.json")):
        rec = json.loads(path.read_text())
        unit = rec.get("unit")
        if rec.get("fingerprint") != fingerprint or not isinstance(unit, int) or not 0 <= unit < n_units:
            raise ValueError(f"{path}: unit file from another run or layout (unit={unit})")
        sums, size = _sums_from_json(rec["sums"]), bounds[unit][1] - bounds[unit][0]
        if sums.count != size:
            raise ValueError(f"{path}: {sums.count} users counted for a unit of {size}")
        if "ranks" not in rec:  # written before per-user ranks were kept: run the unit again
            continue
        if len(rec["ranks"]) != size:
            raise ValueError(f"{path}: {len(rec['ranks'])} per-user ranks for a unit of {size}")
        done[unit] = (sums, rec["ranks"])
    return done


# ------------------------------------------------------------------------------------------------ pool


class _Pool:
    """Actors with a bounded number of in-flight units each; dead actors are replaced in place."""

    def __init__(self, factory: ScorerFactory, data_ref: Any, cfg: EvaluatorConfig) -> None:
        import ray

        opts: dict[str, Any] = {"num_cpus": cfg.num_cpus_per_actor, "max_restarts": 0}
        if cfg.spread:
            opts["scheduling_strategy"] = "SPREAD"
        self._cls = ray.remote(EvalWorker).options(**opts)
        self._args = (factory, data_ref, cfg.batch_size, cfg.ks)
        self.actors = [self._cls.remote(*self._args) for _ in range(cfg.num_actors)]
        self.replaced = 0
        try:
            self.nodes = self._ready(self.actors)
        except BaseException:
            self.shutdown()  # no orphan actors holding CPUs in a shared session
            raise

    @staticmethod
    def _ready(actors: list) -> list[str]:
        """Wait until the actors loaded their scorer. A load error (bad checkpoint, missing ID table) is a
        user error: raised at once with the actor's traceback, never retried like a crashed actor."""
        import ray
        from ray.exceptions import RayActorError

        try:
            return ray.get([a.node_id.remote() for a in actors])
        except RayActorError as err:
            raise RuntimeError(f"evaluator actor failed to load its scorer: {err}") from err

    def replace(self, slot: int) -> None:
        import ray

        ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot] = self._cls.remote(*self._args)
        self.nodes[slot] = self._ready([self.actors[slot]])[0]
        self.replaced += 1

    def run(self, todo, bounds, cfg, on_done, on_progress) -> int:
        return _run_units(self, todo, bounds, cfg, on_done, on_progress)

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)


class _LocalPool:
    """``num_actors = 0``: one EvalWorker in this process runs the units in order (no Ray). The same units,
    unit files and merging as the actor pool, so its numbers equal any actor count's."""

    def __init__(self, factory: ScorerFactory, data: EvalSet, cfg: EvaluatorConfig) -> None:
        self.worker = EvalWorker(factory, data, cfg.batch_size, cfg.ks)
        self.nodes = ["local"]

    def run(self, todo, bounds, cfg, on_done, on_progress) -> int:
        for unit in todo:
            on_done(*self.worker.run_unit(unit, *bounds[unit]))
            if on_progress is not None:
                on_progress(self, 0)
        return 0

    def shutdown(self) -> None:
        pass


def _unit_bounds(n_users: int, unit_size: int) -> list[tuple[int, int]]:
    """Deterministic contiguous units covering every user; the last one may be short (no drop_last)."""
    return [(lo, min(n_users, lo + unit_size)) for lo in range(0, n_users, unit_size)]


def _run_units(
    pool: _Pool,
    todo: list[int],
    bounds: list[tuple[int, int]],
    cfg: EvaluatorConfig,
    on_done: Callable[[int, MetricSums, list[int]], None],
    on_progress: Callable[[_Pool, int], None] | None,
) -> int:
    """Drive the pool until every unit in `todo` has a result; returns how many units were re-run."""
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    queue = list(reversed(todo))  # pop() from the end = ascending unit order
    inflight: dict[Any, tuple[int, int]] = {}  # future -> (slot, unit)
    attempts = dict.fromkeys(todo, 0)
    retried = 0

    def submit(slot: int) -> None:
        while queue and sum(1 for s, _ in inflight.values() if s == slot) < cfg.inflight_per_actor:
            unit = queue.pop()
            inflight[pool.actors[slot].run_unit.remote(unit, *bounds[unit])] = (slot, unit)

    for slot in range(len(pool.actors)):
        submit(slot)
    while inflight:
        [fut], _ = ray.wait(list(inflight), num_returns=1)
        slot, unit = inflight.pop(fut)
        try:
            got_unit, sums, ranks = ray.get(fut)
        except (ActorDiedError, ActorUnavailableError, RayActorError):
            retried += _requeue_dead(pool, slot, unit, inflight, queue, attempts, cfg)
        else:
            assert got_unit == unit, (got_unit, unit)
            on_done(unit, sums, ranks)
        submit(slot)
        if on_progress is not None:
            on_progress(pool, len(inflight))
    return retried


def _requeue_dead(pool: _Pool, slot: int, unit: int, inflight: dict, queue: list, attempts: dict, cfg) -> int:
    """Replace a dead actor; its unit (and any other unit it held) goes back to the front of the queue."""
    others = [f for f, (s, _) in inflight.items() if s == slot]
    lost = [unit] + [inflight.pop(f)[1] for f in others]
    for u in lost:
        attempts[u] += 1
        if attempts[u] > cfg.max_unit_retries:
            raise RuntimeError(
                f"unit {u}: its actor died {attempts[u]} times; giving up (results so far are saved)"
            )
    queue.extend(sorted(lost, reverse=True))
    pool.replace(slot)
    return len(lost)


def evaluate(
    data: EvalSet,
    factory: ScorerFactory,
    cfg: EvaluatorConfig | None = None,
    *,
    scorer_desc: dict[str, Any] | None = None,
    results_dir: str | Path | None = None,
    ray_cfg: RayConfig | None = None,
    on_progress: Callable[[_Pool, int], None] | None = None,
) -> EvalResult:
    """Evaluate every user of `data` with scorers made by `factory` on a pool of Ray actors (``num_actors =
    0``: in this process, without Ray).

    `scorer_desc` identifies the scorer and checkpoint in the run fingerprint (default: the factory's
    dataclass fields). `results_dir` makes the run resumable. `on_progress(pool, inflight)` is called after
    every finished unit (tests use it to kill an actor mid-run).
    """
    cfg = cfg or EvaluatorConfig()
    if len(data) == 0:
        raise ValueError(f"{data.name}: no users to evaluate (skipped: {data.skipped})")
    desc = scorer_desc if scorer_desc is not None else _describe(factory)
    fingerprint = run_fingerprint(data, desc, cfg)
    bounds = _unit_bounds(len(data), cfg.unit_size)
    out_dir = Path(results_dir) if results_dir is not None else None
    done = _load_units(out_dir, fingerprint, len(bounds), bounds) if out_dir else {}
    resumed = len(done)
    if cfg.num_actors > 0:
        init_ray(ray_cfg)
    t0 = time.perf_counter()
    bar = tqdm(total=len(data), unit="user", desc=f"eval {data.name}", disable=not cfg.progress)
    bar.update(sum(sums.count for sums, _ in done.values()))

    def on_done(unit: int, sums: MetricSums, ranks: list[int]) -> None:
        if unit in done:  # a duplicate (re-run of a unit whose first result also arrived): keep the first
            return
        done[unit] = (sums, ranks)
        if out_dir is not None:
            rec = {
                "unit": unit,
                "start": bounds[unit][0],
                "stop": bounds[unit][1],
                "fingerprint": fingerprint,
            }
            rec |= {"sums": _sums_to_json(sums), "ranks": ranks}
            _atomic_write(out_dir / f"unit-{unit:06d}.json", json.dumps(rec))
        bar.update(sums.count)

    todo = [u for u in range(len(bounds)) if u not in done]
    try:
        pool = _make_pool(factory, data, cfg) if todo else None
    except BaseException:
        bar.close()
        raise
    load_seconds = time.perf_counter() - t0
    try:
        retried = pool.run(todo, bounds, cfg, on_done, on_progress) if pool else 0
        nodes = list(pool.nodes) if pool else []
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()
    seconds = time.perf_counter() - t0
    assert sorted(done) == list(range(len(bounds))), "a unit has no result"
    total = sum(done[u][0] for u in range(len(bounds)))
    ranks = np.asarray([r for u in range(len(bounds)) for r in done[u][1]], dtype=np.int32)
    assert total.count == len(data) == len(ranks), (total.count, len(data), len(ranks))
    evaluated_now = len(data) - sum(bounds[u][1] - bounds[u][0] for u in range(len(bounds)) if u not in todo)
    return EvalResult(
        dataset=data.name,
        metrics=total.to_dict(),
        users=total.count,
        seconds=seconds,
        load_seconds=load_seconds,
        users_per_s=evaluated_now / max(seconds - load_seconds, 1e-9),
        units=len(bounds),
        units_resumed=resumed,
        units_retried=retried,
        actor_nodes=nodes,
        fingerprint=fingerprint,
        skipped=dict(data.skipped),
        sums=total,
        ranks=ranks,
    )


def _make_pool(factory: ScorerFactory, data: EvalSet, cfg: EvaluatorConfig) -> _Pool | _LocalPool:
    if cfg.num_actors == 0:
        return _LocalPool(factory, data, cfg)
    import ray

    return _Pool(factory, ray.put(data), cfg)


def _describe(factory: ScorerFactory) -> dict[str, Any]:
    if dataclasses.is_dataclass(factory):
        return {"type": type(factory).__name__, **dataclasses.asdict(factory)}
    return {"type": type(factory).__name__, "repr": repr(factory)}


def write_results(
    run_dir: str | Path, result: EvalResult, *, config: dict | None = None, checkpoint: str | None = None
) -> Path:
    """`RUN/eval/<dataset>.json` (metrics, users, config, checkpoint, seconds, users/s), written atomically."""
    out = Path(run_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    rec = {**result.as_dict(), "config": config or {}, "checkpoint": checkpoint}
    path = out / f"{result.dataset}.json"
    _atomic_write(path, json.dumps(rec, indent=2, sort_keys=True))
    return path
