"""Algorithm 1's candidates: generated in jobs (one attempt number, a chunk of items), cached, reused when
provably equal, optionally persisted (`CandidateStore`) and optionally computed elsewhere (a runner: the
local model by default, Ray actors in `cluster/idgen_pool.py`).

A job's result depends only on its attempt number and its items (their texts, in the job's order), never on
the set of IDs already used; so where it runs does not matter, and the walk (`generator._Walk`) stays central.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from fusionrec.trainer.idgen.candidate_store import CandidateStore, Job, JobResult
from fusionrec.trainer.idgen.config import IDGenConfig, normalize_id
from fusionrec.trainer.idgen.diverse_beam import diverse_beam_search
from transformers import PreTrainedModel, PreTrainedTokenizerBase

# A runner takes a round's jobs and yields (job index, result) as each job finishes, in any order.
Runner = Callable[[Sequence[Job]], Iterator[tuple[int, JobResult]]]


class LocalGenerator:
    """Runs jobs with a model in this process (also the body of each Ray actor)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        cfg: IDGenConfig,
        texts: Mapping[str, str],
        track_range: bool = True,
    ):
        self.model, self.tokenizer, self.cfg, self.texts = model.eval(), tokenizer, cfg, texts
        self.track_range = track_range

    def __call__(self, jobs: Sequence[Job]) -> Iterator[tuple[int, JobResult]]:
        for j, (attempt, keys) in enumerate(jobs):
            yield j, self.run(attempt, keys)

    @torch.no_grad()
    def run(self, attempt: int, keys: Sequence[str]) -> JobResult:
        """Attempt `attempt` of each item: its normalised candidates (best first) and stable λ range."""
        enc = self.tokenizer(
            [self.texts[k] for k in keys],
            max_length=self.cfg.max_source_len,
            truncation=True,
            padding=True,
            return_tensors="pt",
        )
        device = next(self.model.parameters()).device
        out = diverse_beam_search(self.model, enc["input_ids"].to(device), enc["attention_mask"].to(device),
                                  self.cfg.beam_config(attempt), self.track_range)  # fmt: skip
        flat = self.tokenizer.batch_decode(out.sequences.flatten(0, 1).cpu(), skip_special_tokens=True)
        k = out.sequences.shape[1]
        spans = [(float(lo), float(hi)) for lo, hi in out.lambda_range.tolist()]
        return [([normalize_id(t) for t in flat[i * k : (i + 1) * k]], spans[i]) for i in range(len(keys))]


class ShardedRunner:
    """Spreads each round's jobs over the ranks of a process group: rank r runs jobs r, r+W, r+2W, ... with its
    own `local` runner, then one all-gather gives every rank every result.

    Every rank of the group must call it with the same jobs (the walk that plans them is deterministic given
    the same results, and every rank receives the same results), so the collectives line up and the ranks
    build the same table by construction; on W ranks a regeneration costs ~1/W of running it everywhere.
    `gather(obj)` is an all-gather of a picklable object (e.g. `DeepspeedStrategy.all_gather_object`).
    """

    def __init__(self, local: Runner, rank: int, world_size: int, gather: Callable[[object], list[object]]):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.local, self.rank, self.world_size, self.gather = local, rank, world_size, gather

    def __call__(self, jobs: Sequence[Job]) -> Iterator[tuple[int, JobResult]]:
        mine = list(range(self.rank, len(jobs), self.world_size))
        done = {mine[i]: result for i, result in self.local([jobs[j] for j in mine])}
        merged: dict[int, JobResult] = {}
        for part in self.gather(done):
            merged.update(part)
        assert sorted(merged) == list(range(len(jobs))), "ranks ran different rounds of jobs"
        yield from sorted(merged.items())


class CandidateCache:
    """cands[item][a] = normalised IDs of attempt a, best first; filled round by round.

    With `reuse`, an attempt whose λ lies inside the stable penalty range of an earlier attempt of the same
    window (`BeamOutput.lambda_range`) is not run: it has the same candidates, possibly in another order. That
    is exact for the walk: it reaches attempt a only when every candidate of the earlier attempt is taken, so
    a reused attempt never supplies an ID — except through the fallback, which reads the order of the last
    attempt, so the last attempt is always run.
    """

    def __init__(self, cfg: IDGenConfig, runner: Runner, store: CandidateStore | None = None, reuse: bool = True):
        self.cfg, self.runner, self.store, self.reuse = cfg, runner, store, reuse
        self.cands: dict[str, list[list[str]]] = {}
        self.ranges: dict[str, list[tuple[float, float]]] = {}
        self.rounds = 0
        self.items_generated = 0  # item-attempts run through the model (work done, this process)
        self.items_restored = 0  # item-attempts read back from the store
        self.items_reused = 0  # item-attempts proven equal to an earlier one (no work)

    def plan(self, keys: Sequence[str], batch_size: int) -> list[Job]:
        """The next round's jobs: each item's next attempt that must really run (reusable ones are copied
        now), grouped by attempt number (one DBS setting per call), in chunks of `batch_size`."""
        by_attempt: dict[int, list[str]] = {}
        for key in keys:
            a = len(self.cands.setdefault(key, []))
            while self._reused(key, a):  # a copy fails where its original failed: go on to the next attempt
                a += 1
            by_attempt.setdefault(a, []).append(key)
        return [(a, tuple(group[s : s + batch_size]))
                for a, group in sorted(by_attempt.items()) for s in range(0, len(group), batch_size)]  # fmt: skip

    def generate(self, keys: Sequence[str], batch_size: int) -> None:
        """One round: plan, persist the plan, run the jobs, absorb (and persist) each result."""
        jobs = self.plan(keys, batch_size)
        if self.store is not None:
            self.store.save_plan(self.rounds, jobs)
        self._run(jobs, range(len(jobs)))
        self.rounds += 1

    def restore(self) -> int:
        """Replay the store's rounds (running the interrupted round's missing jobs); returns rounds restored."""
        if self.store is None:
            return 0
        for jobs, done in self.store.rounds():
            for a, keys in jobs:  # re-derive the copies the plan made before its jobs ran
                for key in keys:
                    while len(self.cands.setdefault(key, [])) < a:
                        if not self._reused(key, len(self.cands[key])):
                            raise ValueError(f"{self.store.folder}: round {self.rounds} plans attempt {a} of "
                                             f"{key!r}, which this run cannot reach; the store is not this run's")  # fmt: skip
            for j, result in done.items():
                self._absorb(jobs[j], result)
                self.items_restored += len(result)
            self._run(jobs, [j for j in range(len(jobs)) if j not in done])
            self.rounds += 1
        return self.rounds

    def _run(self, jobs: list[Job], todo: Sequence[int]) -> None:
        if not todo:
            return
        subset = [jobs[j] for j in todo]
        for i, result in self.runner(subset):
            j = todo[i]
            if len(result) != len(jobs[j][1]):
                raise RuntimeError(f"job {j}: {len(result)} results for {len(jobs[j][1])} items")
            self._absorb(jobs[j], result)
            self.items_generated += len(result)
            if self.store is not None:
                self.store.save_result(self.rounds, j, result)

    def _absorb(self, job: Job, result: JobResult) -> None:
        a, keys = job
        for key, (cands, span) in zip(keys, result, strict=True):
            assert len(self.cands[key]) == a, (key, a, len(self.cands[key]))
            self.cands[key].append(cands)
            self.ranges.setdefault(key, []).append(span)

    def _reused(self, key: str, a: int) -> bool:
        """Attempt `a` of `key` equals an earlier attempt of its window: copy it (see the class docstring)."""
        if not self.reuse or a + 1 >= self.cfg.max_attempts:
            return False
        window, lam = self.cfg.attempt(a)
        spans = self.ranges.setdefault(key, [])
        for b in range(a - 1, -1, -1):
            if b >= len(spans) or self.cfg.attempt(b)[0] != window:
                break
            lo, hi = spans[b]
            if lo < lam < hi:
                self.cands[key].append(self.cands[key][b])
                spans.append(spans[b])
                self.items_reused += 1
                return True
        return False
