"""Benchmark: building shards for Beauty+Sports+Toys (../shared/data) with the Ray Data pipeline vs a
single-process pure-Python pass doing the same work, in one run.

Both sides start from the same RawDatasets (the readers are shared code and are timed once, separately)
and do: dedupe, 5-core to a fixed point, stable time sort, item text, namespacing, leave-one-out samples,
the seeded corpus order, JSON, tar bytes and sha256 of every shard. `match` is true when both wrote
byte-identical shards. Records = input interactions. `quick` uses Beauty only. Extra lines: the first
(cold) Ray Data run of the session, and Ray vs the same shard writer run in-process (engine="local").

    python -m fusionrec.bench.prepare [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from fusionrec.data_pipeline.config import DataConfig, ShardConfig
from fusionrec.data_pipeline.fusion import namespace
from fusionrec.data_pipeline.preprocess import preprocess
from fusionrec.data_pipeline.records import RawDataset
from fusionrec.data_pipeline.shards import SHARD_PATTERN, init_ray, safe_key_part, write_shards

DATASETS = {"beauty": "amazon_beauty", "sports": "amazon_sports", "toys": "amazon_toys"}
SAMPLES_PER_SHARD = 20000
SEED = 0


def shared_data_dir() -> Path:
    for cand in (
        os.environ.get("FUSIONREC_SHARED_DIR"),
        Path(__file__).resolve().parents[1].parent / "shared",
    ):
        if cand and (Path(cand) / "data" / "amazon_beauty").is_dir():
            return Path(cand) / "data"
    return Path("/work/shared/data")


# ------------------------------------------------------------------------------- the pure-Python baseline
def _python_sequences(raw: RawDataset, k: int) -> list[tuple[str, list[str]]]:
    """Dedupe, k-core and time-sort with dicts and lists: the straightforward single-process way."""
    cols = raw.interactions.to_pydict()
    first: dict[tuple[str, str], tuple[int, int]] = {}
    for idx, (u, i, t) in enumerate(zip(cols["user_id"], cols["item_id"], cols["timestamp"], strict=True)):
        if (u, i) not in first or (t, idx) < first[(u, i)]:
            first[(u, i)] = (t, idx)
    rows = sorted((idx, u, i, t) for (u, i), (t, idx) in first.items())
    while True:
        ucount = Counter(r[1] for r in rows)
        icount = Counter(r[2] for r in rows)
        kept = [r for r in rows if ucount[r[1]] >= k and icount[r[2]] >= k]
        if len(kept) == len(rows):
            break
        rows = kept
    per_user: dict[str, list[tuple[int, int, str]]] = {}
    for idx, u, i, t in rows:
        per_user.setdefault(u, []).append((t, idx, i))
    return [(u, [i for _, _, i in sorted(v)]) for u, v in per_user.items() if len(v) >= 3]


def _python_item_text(raw: RawDataset, used: set[str], cap: int) -> dict[str, str]:
    text = {}
    for row in raw.items.to_pylist():
        if row["item_id"] not in used:
            continue
        fields = [
            ("title", row["title"]),
            ("brand", row["brand"]),
            ("categories", ", ".join(row["categories"] or [])),
        ]
        fields += [("description", row["description"])]
        fields += [("price", None if row["price"] is None else f"{round(row['price'], 2):g}")]
        rendered = "; ".join(f"{k}: {v.strip()}" for k, v in fields if v and v.strip())
        text[row["item_id"]] = ((row["text"] or "").strip() or rendered)[:cap].rstrip()
    return text


def python_pass(raws: list[RawDataset], out_dir: Path, cfg: DataConfig) -> list[str]:
    """The whole job in one process with plain Python; returns the sha256 of every shard."""
    users = []  # (dataset, namespaced user, namespaced items)
    for raw in raws:
        seqs = _python_sequences(raw, cfg.kcore)
        _python_item_text(raw, {i for _, items in seqs for i in items}, cfg.item_text_max_chars)
        users += [(raw.name, f"{raw.name}:{u}", [f"{raw.name}:{i}" for i in items]) for u, items in seqs]
    samples = [(d, u, items, t) for d, u, items in users for t in range(1, len(items))]
    order = np.random.default_rng(cfg.seed).permutation(len(samples)).tolist()
    hashes, h = [], cfg.max_history
    for shard, start in enumerate(range(0, len(order), SAMPLES_PER_SHARD)):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for j in order[start : start + SAMPLES_PER_SHARD]:
                d, u, items, t = samples[j]
                split = "train" if t <= len(items) - 3 else ("valid" if t == len(items) - 2 else "test")
                sample = {
                    "dataset": d,
                    "user": u,
                    "split": split,
                    "history": items[max(0, t - h) : t],
                    "target": items[t],
                }
                body = json.dumps(sample, separators=(",", ":")).encode()
                info = tarfile.TarInfo(f"{safe_key_part(d)}/{safe_key_part(u)}/{split}/{t}.json")
                info.size, info.mtime, info.mode = len(body), 0, 0o644
                tar.addfile(info, io.BytesIO(body))
        (out_dir / SHARD_PATTERN.format(shard)).write_bytes(buf.getvalue())
        hashes.append(hashlib.sha256(buf.getvalue()).hexdigest())
    return hashes


# ------------------------------------------------------------------------------- ours
def pipeline_pass(raws: list[RawDataset], out_dir: Path, cfg: DataConfig) -> tuple[list[str], dict]:
    """preprocess (vectorised) -> namespacing -> shards via Ray Data (or the local engine)."""
    t0 = time.perf_counter()
    datasets = [namespace(preprocess(raw, cfg)) for raw in raws]
    t1 = time.perf_counter()
    manifest = write_shards(
        datasets,
        out_dir,
        cfg.shards,
        max_history=cfg.max_history,
        seed=cfg.seed,
        sources={},
        config_sha256="",
    )
    t2 = time.perf_counter()
    return [s["sha256"] for s in manifest["shards"]], {"preprocess_s": t1 - t0, "shards_s": t2 - t1}


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def run(quick: bool = False) -> list[dict]:
    from fusionrec.data_pipeline.readers import read_dataset

    data = shared_data_dir()
    names = ["beauty"] if quick else list(DATASETS)
    raws, read_s = _timed(lambda: [read_dataset("p5", data / DATASETS[n], name=n) for n in names])
    records = sum(r.interactions.num_rows for r in raws)
    ray_cfg = DataConfig(shards=ShardConfig(samples_per_shard=SAMPLES_PER_SHARD, engine="ray"))
    local_cfg = DataConfig(shards=ShardConfig(samples_per_shard=SAMPLES_PER_SHARD, engine="local"))
    _, init_s = _timed(init_ray, None, 2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for d in ("cold", "ray", "local", "python"):
            (tmp / d).mkdir()
        # The first Ray Data run of a session also starts and warms the worker processes (a one-off per
        # node); it is reported separately from the steady state.
        (cold_hashes, _), cold_s = _timed(pipeline_pass, raws, tmp / "cold", ray_cfg)
        (ray_hashes, stages), ray_s = _timed(pipeline_pass, raws, tmp / "ray", ray_cfg)
        (local_hashes, _), local_s = _timed(pipeline_pass, raws, tmp / "local", local_cfg)
        py_hashes, py_s = _timed(python_pass, raws, tmp / "python", local_cfg)
    label = "+".join(names)
    common = {"unit": "records/s", "records": records, "datasets": label}
    return [
        {
            "bench": "prepare_ray_vs_python",
            "ours": records / ray_s,
            "baseline": records / py_s,
            "ratio": py_s / ray_s,
            "match": ray_hashes == py_hashes,
            **common,
            "seconds": {"ours": ray_s, "baseline": py_s, **stages, "ray_init": init_s, "read": read_s},
        },
        {
            "bench": "prepare_ray_cold_vs_python",
            "ours": records / cold_s,
            "baseline": records / py_s,
            "ratio": py_s / cold_s,
            "match": cold_hashes == py_hashes,
            **common,
        },
        {
            "bench": "prepare_ray_vs_local_engine",
            "ours": records / ray_s,
            "baseline": records / local_s,
            "ratio": local_s / ray_s,
            "match": ray_hashes == local_hashes,
            **common,
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    for line in run(quick=parser.parse_args().quick):
        print(json.dumps(line))


if __name__ == "__main__":
    main()
