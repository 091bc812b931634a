"""The on-disk memory of a diverse-ID-generation run (Algorithm 1), so that a killed run resumes exactly.

Algorithm 1 proceeds in rounds: a round generates one more attempt for every item the walk left blocked,
split into jobs (one attempt number, a chunk of items). A round's plan is written before any of its jobs
runs, and each job's candidates as soon as that job finishes, so a resumed run replays the finished rounds,
runs the missing jobs of the interrupted round with exactly the planned composition, and then continues as
the uninterrupted run would have: the same jobs, hence the same candidates and the same table.

Layout of the folder:
    store.json                      identity: texts hash, Algorithm-1 settings, the generator's identity
    round-00003.plan.json           {"jobs": [[attempt, [item, ...]], ...]}
    round-00003.job-00012.json      {"result": [[[candidate, ...], [lo, hi]], ...]} in the job's item order

Every file is written atomically (temp name + rename): a kill leaves whole files or none.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fusionrec.fileio import atomic_write_text

STORE_VERSION = 1
Job = tuple[int, tuple[str, ...]]  # (attempt number, item keys)
JobResult = list[tuple[list[str], tuple[float, float]]]  # per item: candidates (best first), stable λ range


def texts_hash(texts: Mapping[str, str]) -> str:
    """Order-sensitive hash of the items and their texts (the walk order is part of the result)."""
    h = hashlib.sha256()
    for key, text in texts.items():
        h.update(key.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()


class CandidateStore:
    """One folder per (items, settings, generator); refuses to mix runs of different identities."""

    def __init__(self, folder: str | Path, identity: Mapping[str, Any]):
        self.folder = Path(folder)
        self.identity = {"version": STORE_VERSION, **identity}
        marker = self.folder / "store.json"
        self.folder.mkdir(parents=True, exist_ok=True)
        if marker.is_file():
            found = json.loads(marker.read_text())
            if found != json.loads(json.dumps(self.identity)):
                diff = sorted(k for k in {*found, *self.identity} if found.get(k) != self.identity.get(k))
                raise ValueError(
                    f"{marker}: the stored ID-generation run differs in {diff}; use another folder or delete "
                    f"this one to start over"
                )
        else:
            atomic_write_text(marker, json.dumps(self.identity, indent=2, sort_keys=True))

    def _plan_path(self, rnd: int) -> Path:
        return self.folder / f"round-{rnd:05d}.plan.json"

    def _job_path(self, rnd: int, job: int) -> Path:
        return self.folder / f"round-{rnd:05d}.job-{job:05d}.json"

    def save_plan(self, rnd: int, jobs: Sequence[Job]) -> None:
        atomic_write_text(self._plan_path(rnd), json.dumps({"jobs": [[a, list(keys)] for a, keys in jobs]}))

    def save_result(self, rnd: int, job: int, result: JobResult) -> None:
        atomic_write_text(self._job_path(rnd, job), json.dumps({"result": [[c, list(s)] for c, s in result]}))

    def rounds(self) -> list[tuple[list[Job], dict[int, JobResult]]]:
        """Every stored round in order: its planned jobs and the results found (a missing job = not done)."""
        out = []
        rnd = 0
        while self._plan_path(rnd).is_file():
            plan = json.loads(self._plan_path(rnd).read_text())
            jobs = [(int(a), tuple(keys)) for a, keys in plan["jobs"]]
            done: dict[int, JobResult] = {}
            for j, (_, keys) in enumerate(jobs):
                path = self._job_path(rnd, j)
                if path.is_file():
                    result = [(list(c), (float(s[0]), float(s[1]))) for c, s in json.loads(path.read_text())["result"]]
                    if len(result) != len(keys):
                        raise ValueError(f"{path}: {len(result)} results for {len(keys)} planned items")
                    done[j] = result
            out.append((jobs, done))
            rnd += 1
        return out
