"""Leave-one-out samples -> deterministic WebDataset shards (Ray Data) + manifest.json; verify/inspect.

Why our own tar writer: Ray's `write_webdataset` stamps every member with `mtime=time.time()` (ray 2.60,
`webdataset_datasink.py`), so two runs never give the same bytes. Instead a Ray Data `map_batches`
stage (one shard per batch, an actor pool holding the read-only plan) renders samples and tar bytes
with fixed headers (mtime 0, uid/gid 0, mode 0644, GNU format exactly as `tarfile` writes it) and
writes each shard under a temp name, renamed into place. The sample order is a seeded permutation
computed in the driver, so shard contents depend on data + config + seed only, never on scheduling.

A sample is the tar member `<key>.json` with {dataset, user, split, history, target} (compact JSON,
byte-identical to `json.dumps(sample, separators=(",", ":"))`); keys are
`<dataset>/<user>/<split>/<target position>` with the user id percent-encoded (and '.' escaped, since
WebDataset splits key and extension at the first dot).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from fusionrec import __version__

from ..fileio import atomic_write_text
from .config import ShardConfig
from .errors import DataError
from .preprocess import ProcessedDataset, sample_positions
from .records import SPLITS

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SHARD_PATTERN = "shard-{:06d}.tar"
BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
SIZE_ESTIMATE_SAMPLES = 2000  # samples rendered to turn target_mb into samples per shard


# ----------------------------------------------------------------------------------------- tar bytes
def _header_template() -> tuple[bytes, int]:
    info = tarfile.TarInfo("")
    info.mtime, info.mode, info.size = 0, 0o644, 0
    blank = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    blank[124:136] = bytes(12)  # size field is filled per member
    blank[148:156] = b" " * 8  # checksum is computed over spaces in its own field
    return bytes(blank), sum(blank)


_TEMPLATE, _TEMPLATE_SUM = _header_template()


def tar_member(name: str, data: bytes) -> bytes:
    """One tar member (header + padded data), byte-identical to `tarfile` GNU format with mtime 0,
    uid/gid 0, mode 0644 and empty owner names. Fast path for short ASCII names (the common case)."""
    encoded = name.encode("utf-8")
    if len(encoded) > 100 or not name.isascii():
        info = tarfile.TarInfo(name)
        info.mtime, info.mode, info.size = 0, 0o644, len(data)
        header = info.tobuf(format=tarfile.GNU_FORMAT, encoding="utf-8", errors="strict")
    else:
        size = b"%011o\0" % len(data)
        chksum = _TEMPLATE_SUM + sum(encoded) + sum(size)
        header = b"".join(
            (
                encoded,
                _TEMPLATE[len(encoded) : 124],
                size,
                _TEMPLATE[136:148],
                b"%06o\0 " % chksum,
                _TEMPLATE[156:],
            )
        )
    return header + data + bytes(-len(data) % BLOCK)


def tar_end(offset: int) -> bytes:
    """End-of-archive marker plus padding to a full record, as `tarfile.TarFile.close` writes it."""
    offset += 2 * BLOCK
    return bytes(2 * BLOCK + (-offset % RECORD))


def safe_key_part(value: str) -> str:
    """Injective, filename-safe, dot-free encoding of an id for use inside a WebDataset key."""
    return quote(value, safe="-_~").replace(".", "%2E")


# ----------------------------------------------------------------------------------------- the plan
@dataclass
class ShardPlan:
    """Everything a shard task needs, built once in the driver and shared read-only via the object store."""

    dataset_json: list[bytes]  # per dataset: JSON string of its name
    dataset_keys: list[str]
    user_dataset: np.ndarray  # per global user: dataset index
    user_json: list[bytes]
    user_keys: list[str]
    item_json: list[bytes]  # per item code: JSON string of the (namespaced) item id
    offsets: np.ndarray  # per global user: start of its items in `flat`
    flat: np.ndarray  # item codes of all sequences, time ordered
    s_user: np.ndarray  # samples in corpus order (seeded permutation): user, target position, split
    s_pos: np.ndarray
    s_split: np.ndarray
    max_history: int
    bounds: list[tuple[int, int]]  # per shard: [start, end) in corpus order

    @property
    def num_samples(self) -> int:
        return len(self.s_user)


def build_plan(datasets: list[ProcessedDataset], max_history: int, seed: int) -> ShardPlan:
    """Vectorised sample index for the corpus, in a seeded order (shard bounds are filled in later)."""
    # Item codes in order of first appearance: a deterministic function of the data.
    item_ids = pc.unique(pa.chunked_array([pc.list_flatten(ds.sequences["item_ids"]) for ds in datasets]))
    vocab = item_ids.to_pylist()
    codes, users, user_ds, lengths = [], [], [], []
    for d, ds in enumerate(datasets):
        flat = pc.list_flatten(ds.sequences["item_ids"]).combine_chunks()
        codes.append(pc.index_in(flat, value_set=item_ids).to_numpy().astype(np.int32))
        users.extend(ds.sequences["user_id"].to_pylist())
        lens = ds.lengths()
        lengths.append(lens)
        user_ds.append(np.full(len(lens), d, dtype=np.int16))
    lengths_all = np.concatenate(lengths)
    s_user, s_pos, s_split = sample_positions(lengths_all)
    perm = np.random.default_rng(seed).permutation(len(s_user))
    offsets = np.zeros(len(lengths_all) + 1, dtype=np.int64)
    np.cumsum(lengths_all, out=offsets[1:])
    return ShardPlan(
        dataset_json=[json.dumps(ds.name).encode() for ds in datasets],
        dataset_keys=[safe_key_part(ds.name) for ds in datasets],
        user_dataset=np.concatenate(user_ds),
        user_json=[json.dumps(u).encode() for u in users],
        user_keys=[safe_key_part(u) for u in users],
        item_json=[json.dumps(i).encode() for i in vocab],
        offsets=offsets,
        flat=np.concatenate(codes),
        s_user=s_user[perm].astype(np.int32),
        s_pos=s_pos[perm].astype(np.int32),
        s_split=s_split[perm],
        max_history=max_history,
        bounds=[],
    )


_SPLIT_JSON = [json.dumps(s).encode() for s in SPLITS]


def render_samples(plan: ShardPlan, start: int, end: int) -> list[bytes]:
    """Tar members for samples [start, end) of the corpus order."""
    items, flat, offsets, h = plan.item_json, plan.flat, plan.offsets, plan.max_history
    out = []
    for u, t, s in zip(
        plan.s_user[start:end].tolist(),
        plan.s_pos[start:end].tolist(),
        plan.s_split[start:end].tolist(),
        strict=True,
    ):
        base = int(offsets[u])
        d = int(plan.user_dataset[u])
        history = b",".join([items[c] for c in flat[base + max(0, t - h) : base + t].tolist()])
        body = b"".join(
            (
                b'{"dataset":',
                plan.dataset_json[d],
                b',"user":',
                plan.user_json[u],
                b',"split":',
                _SPLIT_JSON[s],
                b',"history":[',
                history,
                b'],"target":',
                items[flat[base + t]],
                b"}",
            )
        )
        key = f"{plan.dataset_keys[d]}/{plan.user_keys[u]}/{SPLITS[s]}/{t}.json"
        out.append(tar_member(key, body))
    return out


def write_shard(plan: ShardPlan, index: int, out_dir: str) -> dict:
    """Render shard `index`, write it under a temp name, rename it into place; return its manifest entry."""
    start, end = plan.bounds[index]
    members = render_samples(plan, start, end)
    size = sum(len(m) for m in members)
    blob = b"".join(members) + tar_end(size)
    name = SHARD_PATTERN.format(index)
    tmp = Path(out_dir) / f".{name}.tmp-{uuid.uuid4().hex}"
    tmp.write_bytes(blob)
    os.replace(tmp, Path(out_dir) / name)
    cells = plan.user_dataset[plan.s_user[start:end]].astype(np.int64) * len(SPLITS) + plan.s_split[start:end]
    counts = np.bincount(cells, minlength=len(plan.dataset_json) * len(SPLITS))
    return {
        "index": index,
        "name": name,
        "samples": end - start,
        "bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "counts": counts.tolist(),
    }


def shard_bounds(plan: ShardPlan, cfg: ShardConfig) -> list[tuple[int, int]]:
    """Split the corpus order into shards of `samples_per_shard`, or of ~`target_mb` (size estimated from
    the first samples of the seeded order, so it is a deterministic function of the data)."""
    n = plan.num_samples
    per = cfg.samples_per_shard
    if not per:
        probe = render_samples(plan, 0, min(n, SIZE_ESTIMATE_SAMPLES))
        avg = sum(len(m) for m in probe) / max(1, len(probe))
        per = max(1, int(cfg.target_mb * 1024 * 1024 // max(avg, 1)))
    return [(s, min(s + per, n)) for s in range(0, n, per)]


# ----------------------------------------------------------------------------------------- Ray Data
def init_ray(address: str | None = None, num_cpus: int = 2) -> None:
    """Reuse a running Ray session, join `address` (cluster), or start a local in-process Ray bound to
    127.0.0.1. The env defaults must be set before Ray starts (see ENVIRONMENT.md)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            _node_ip_address="127.0.0.1",
            logging_level=logging.WARNING,
        )
    ray.data.DataContext.get_current().enable_progress_bars = False
    _quiet_ray_data()


def _quiet_ray_data() -> None:
    """Ray Data's per-dataset INFO lines (execution start, plan, finish) and its nag about the progress bars
    we switch off repeat for every shard write; our own stage lines say what runs. Warnings still show."""
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").addFilter(
        lambda record: "Progress bars disabled" not in record.getMessage()
    )


_WORKER_PLAN: dict[str, ShardPlan] = {}  # per Ray worker process: the plan of the corpus being written


def _write_shard_batch(batch: dict, plan_ref: list, out_dir: str) -> dict:
    """Ray Data task: write the shards named in `batch`. The plan is fetched once per worker process and
    cached (tasks reuse warm workers; an actor pool cost ~6 s of fixed start-up per run, measured)."""
    import ray

    key = plan_ref[0].hex()  # the ref is wrapped in a list so Ray passes the ref, not the value
    if key not in _WORKER_PLAN:
        _WORKER_PLAN.clear()
        _WORKER_PLAN[key] = ray.get(plan_ref[0])
    rows = [write_shard(_WORKER_PLAN[key], int(i), out_dir) for i in batch["id"]]
    return {k: [r[k] for r in rows] for k in rows[0]}


def _run_ray(plan: ShardPlan, out_dir: Path, cfg: ShardConfig) -> list[dict]:
    import ray

    init_ray(cfg.ray_address, cfg.num_cpus)
    plan_ref = ray.put(plan)
    n = len(plan.bounds)
    # from_items materialises the shard indices in the driver (no read stage to schedule), one block per
    # shard so that the shards spread over all CPUs of the cluster.
    ds = ray.data.from_items([{"id": i} for i in range(n)], override_num_blocks=n)
    ds = ds.map_batches(
        _write_shard_batch,
        fn_kwargs={"plan_ref": [plan_ref], "out_dir": str(out_dir)},
        batch_size=1,
        num_cpus=1,
    )
    rows = ds.take_all()
    return [{**r, "counts": list(r["counts"])} for r in rows]


# ----------------------------------------------------------------------------------------- corpus
def write_shards(
    datasets: list[ProcessedDataset],
    out_dir: str | Path,
    cfg: ShardConfig,
    *,
    max_history: int,
    seed: int,
    sources: dict[str, str],
    config_sha256: str,
) -> dict:
    """Write the shards of one corpus into `out_dir` (which must not hold a corpus yet), then the manifest.

    On any failure the shards written so far are removed and no manifest exists.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / MANIFEST).exists() or any(out_dir.glob("shard-*.tar")):
        raise ValueError(f"{out_dir} already holds a corpus; prepare() replaces corpora atomically")
    plan = build_plan(datasets, max_history, seed)
    plan.bounds = shard_bounds(plan, cfg)
    try:
        if cfg.engine == "ray":
            rows = _run_ray(plan, out_dir, cfg)
        else:
            rows = [write_shard(plan, i, str(out_dir)) for i in range(len(plan.bounds))]
        manifest = _manifest(datasets, sorted(rows, key=lambda r: r["index"]), seed, sources, config_sha256)
        _write_json_atomic(out_dir / MANIFEST, manifest)
    except BaseException:
        for path in [*out_dir.glob("shard-*.tar"), *out_dir.glob(".shard-*.tmp-*")]:
            path.unlink(missing_ok=True)
        raise
    return manifest


def _manifest(datasets, rows, seed, sources, config_sha256) -> dict:
    total = np.sum([r["counts"] for r in rows], axis=0).reshape(len(datasets), len(SPLITS))
    per_dataset = {}
    skipped = {}
    for d, ds in enumerate(datasets):
        samples = dict(zip(SPLITS, total[d].tolist(), strict=True))
        assert samples == ds.split_counts(), f"{ds.name}: shard counts {samples} != {ds.split_counts()}"
        per_dataset[ds.name] = {
            **ds.stats().as_dict(),
            "repeat_interactions": ds.repeat_interactions(),
            "kcore_rounds": ds.kcore_rounds,
            "samples": samples,
        }
        if ds.policy is not None:
            per_dataset[ds.name]["policy"] = ds.policy.as_dict()
        skipped.update({f"{ds.name}/{reason}": n for reason, n in sorted(ds.skipped.items())})
    return {
        "schema_version": SCHEMA_VERSION,
        "fusionrec_version": __version__,
        "config_sha256": config_sha256,
        "seed": seed,
        "sources": dict(sorted(sources.items())),
        "shards": [{k: r[k] for k in ("name", "samples", "bytes", "sha256")} for r in rows],
        "samples": int(total.sum()),
        "splits": dict(zip(SPLITS, total.sum(axis=0).tolist(), strict=True)),
        "datasets": per_dataset,
        "skipped": skipped,
    }


def _write_json_atomic(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ----------------------------------------------------------------------------------------- inspect
def _count_shard(path: Path, names: dict[str, int]) -> np.ndarray:
    counts = np.zeros((len(names), len(SPLITS)), dtype=np.int64)
    split_index = {s: i for i, s in enumerate(SPLITS)}
    with tarfile.open(path) as tar:
        for member in tar:
            sample = json.loads(tar.extractfile(member).read())
            try:
                counts[names[sample["dataset"]], split_index[sample["split"]]] += 1
            except KeyError as err:
                raise DataError(path, None, f"member {member.name}: unknown dataset/split {err}") from None
    return counts


def inspect(out_dir: str | Path) -> dict:
    """Verify every shard (exists, size, sha256, per-dataset/split sample counts) against the manifest and
    return `{"samples", "shards", "datasets": {name: {users, items, interactions, samples}}}` (+ the
    zero-shot corpora under "zeroshot"). Any mismatch raises DataError naming the shard."""
    out_dir = Path(out_dir)
    path = out_dir / MANIFEST
    if not path.exists():
        raise DataError(path, None, "no manifest: not a corpus (missing, or a failed/interrupted prepare)")
    manifest = json.loads(path.read_text())
    names = {n: i for i, n in enumerate(manifest["datasets"])}
    total = np.zeros((len(names), len(SPLITS)), dtype=np.int64)
    listed = set()
    for entry in manifest["shards"]:
        shard = out_dir / entry["name"]
        listed.add(entry["name"])
        if not shard.exists():
            raise DataError(shard, None, "shard listed in the manifest is missing")
        if shard.stat().st_size != entry["bytes"] or sha256_file(shard) != entry["sha256"]:
            raise DataError(
                shard, None, "shard bytes/sha256 differ from the manifest (corrupted or replaced)"
            )
        counts = _count_shard(shard, names)
        if counts.sum() != entry["samples"]:
            raise DataError(shard, None, f"holds {counts.sum()} samples, manifest says {entry['samples']}")
        total += counts
    extra = sorted(p.name for p in out_dir.glob("shard-*.tar") if p.name not in listed)
    if extra:
        raise DataError(out_dir / extra[0], None, f"{len(extra)} shard(s) not listed in the manifest")
    report = {"samples": int(total.sum()), "shards": len(manifest["shards"]), "datasets": {}}
    for name, d in names.items():
        want = manifest["datasets"][name]
        got = dict(zip(SPLITS, total[d].tolist(), strict=True))
        if got != want["samples"]:
            raise DataError(
                path, None, f"dataset {name!r}: shards hold {got} samples, manifest says {want['samples']}"
            )
        report["datasets"][name] = {k: want[k] for k in ("users", "items", "interactions")} | {"samples": got}
    if report["samples"] != manifest["samples"]:
        raise DataError(
            path, None, f"shards hold {report['samples']} samples, manifest says {manifest['samples']}"
        )
    zeroshot = out_dir / "zeroshot"
    if zeroshot.is_dir():
        report["zeroshot"] = {p.name: inspect(p) for p in sorted(zeroshot.iterdir()) if p.is_dir()}
    return report


def format_inspect(report: dict, indent: str = "") -> str:
    """Human-readable rendering of `inspect()`."""
    lines = [f"{indent}{report['samples']:,} samples in {report['shards']} shard(s) - all hashes verified"]
    for name, ds in report["datasets"].items():
        s = ds["samples"]
        lines.append(
            f"{indent}  {name}: {ds['users']:,} users, {ds['items']:,} items, {ds['interactions']:,} interactions;"
            f" samples train {s['train']:,} / valid {s['valid']:,} / test {s['test']:,}"
        )
    for name, sub in report.get("zeroshot", {}).items():
        lines.append(f"{indent}zero-shot {name}:")
        lines.append(format_inspect(sub, indent + "  "))
    return "\n".join(lines)
