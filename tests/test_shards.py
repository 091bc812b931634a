"""Shards: byte-exact tar writer, samples equal the leave-one-out reference, determinism (local == Ray),
sizing, manifest counts == samples read back, inspect() catching corruption, cleanup on failure."""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections import Counter

import pyarrow as pa
import pytest
import webdataset as wds
from fusionrec.data_pipeline import shards
from fusionrec.data_pipeline.config import DataConfig, ShardConfig
from fusionrec.data_pipeline.errors import DataError
from fusionrec.data_pipeline.fusion import namespace
from fusionrec.data_pipeline.preprocess import leave_one_out, preprocess
from fusionrec.data_pipeline.records import INTERACTION_SCHEMA, ITEM_SCHEMA, RawDataset
from fusionrec.data_pipeline.shards import (
    format_inspect,
    inspect,
    safe_key_part,
    tar_end,
    tar_member,
    write_shards,
)


def corpus_dataset(name: str, n_users: int, seed: int):
    """Random users of 3..12 items over 15 items (kcore=1 keeps everything; P5-like positions as time)."""
    rng = random.Random(seed)
    rows = []
    for u in range(n_users):
        items = rng.sample(range(15), rng.randint(3, 12))
        rows += [(f"u.{u}", f"I{i}", t) for t, i in enumerate(items)]
    u, i, t = zip(*rows, strict=True)
    inter = pa.Table.from_pydict(
        {"user_id": list(u), "item_id": list(i), "timestamp": list(t), "rating": [None] * len(u)},
        schema=INTERACTION_SCHEMA,
    )
    meta = {f.name: [None] * 15 for f in ITEM_SCHEMA}
    meta["item_id"], meta["title"] = [f"I{j}" for j in range(15)], [f"t{j}" for j in range(15)]
    raw = RawDataset(name, inter, pa.Table.from_pydict(meta, schema=ITEM_SCHEMA), [], {})
    return namespace(preprocess(raw, DataConfig(kcore=1)))


@pytest.fixture(scope="module")
def two_datasets():
    return [corpus_dataset("beauty", 40, 1), corpus_dataset("toys", 25, 2)]


def write(datasets, out, engine="local", seed=0, max_history=50, **shard_kw):
    cfg = ShardConfig(engine=engine, **(shard_kw or {"samples_per_shard": 64}))
    return write_shards(
        datasets,
        out,
        cfg,
        max_history=max_history,
        seed=seed,
        sources={"/src/a": "ab" * 32},
        config_sha256="c" * 64,
    )


def read_back(out) -> list[dict]:
    names = sorted(p.name for p in out.glob("shard-*.tar"))
    pipeline = wds.WebDataset([str(out / n) for n in names], shardshuffle=False)
    return [dict(json.loads(s["json"]), key=s["__key__"]) for s in pipeline]


def reference_samples(datasets, max_history) -> Counter:
    want = Counter()
    for ds in datasets:
        for user, items in zip(
            *ds.sequences.select(["user_id", "item_ids"]).to_pydict().values(), strict=True
        ):
            for split, history, target in leave_one_out(items, max_history):
                want[(ds.name, user, split, tuple(history), target)] += 1
    return want


@pytest.mark.unit
@pytest.mark.parametrize("name", ["a/b/train/3.json", "x" * 100 + ".json", "ünï/côde.json", "d/" + "y" * 150])
@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 5000])
def test_tar_bytes_equal_tarfile_gnu_output(name, size):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    ref = io.BytesIO()
    with tarfile.open(fileobj=ref, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, 0, 0o644
        tar.addfile(info, io.BytesIO(data))
    member = tar_member(name, data)
    assert member + tar_end(len(member)) == ref.getvalue()


@pytest.mark.unit
def test_key_parts_are_dot_free_and_injective():
    ids = ["a.b", "a_b", "a%2Eb", "a/b", "a b", "beauty:u1"]
    keys = [safe_key_part(i) for i in ids]
    assert len(set(keys)) == len(ids)
    assert all("." not in k and "/" not in k for k in keys)


@pytest.mark.unit
def test_samples_equal_leave_one_out_reference_and_manifest_counts(tmp_path, two_datasets):
    manifest = write(two_datasets, tmp_path, max_history=4)
    got = read_back(tmp_path)
    assert Counter((s["dataset"], s["user"], s["split"], tuple(s["history"]), s["target"]) for s in got) == (
        reference_samples(two_datasets, 4)
    )
    lengths = {ds.name: ds.lengths() for ds in two_datasets}
    for name, lens in lengths.items():
        want = {"train": int((lens - 3).sum()), "valid": len(lens), "test": len(lens)}
        assert manifest["datasets"][name]["samples"] == want
        assert Counter(s["split"] for s in got if s["dataset"] == name) == want
    assert manifest["samples"] == len(got) == sum(s["samples"] for s in manifest["shards"])
    assert [s["samples"] for s in manifest["shards"]][:-1] == [64] * (len(manifest["shards"]) - 1)
    assert got[0]["key"].startswith(("beauty/beauty%3Au%2E", "toys/toys%3Au%2E"))
    # Compact JSON, byte-identical to json.dumps of the sample dict (what any reader would write).
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        member = tar.next()
        body = tar.extractfile(member).read()
    assert body == json.dumps(json.loads(body), separators=(",", ":")).encode()
    assert list(json.loads(body)) == ["dataset", "user", "split", "history", "target"]
    assert manifest["sources"] == {"/src/a": "ab" * 32} and manifest["schema_version"] == 1


@pytest.mark.unit
def test_same_input_and_seed_give_identical_bytes_other_seed_reorders(tmp_path, two_datasets):
    a = write(two_datasets, tmp_path / "a")
    b = write(two_datasets, tmp_path / "b")
    c = write(two_datasets, tmp_path / "c", seed=1)
    assert a["shards"] == b["shards"]
    assert (tmp_path / "a/shard-000000.tar").read_bytes() == (tmp_path / "b/shard-000000.tar").read_bytes()
    assert [s["sha256"] for s in a["shards"]] != [s["sha256"] for s in c["shards"]]
    assert a["splits"] == c["splits"]


@pytest.mark.unit
def test_target_mb_sizes_shards(tmp_path, two_datasets):
    manifest = write(two_datasets, tmp_path, target_mb=0.1)  # ~100 KB shards of ~1 KB samples
    sizes = [s["bytes"] for s in manifest["shards"]]
    assert len(sizes) >= 3
    assert all(0.7 * 0.1 * 2**20 < s < 1.3 * 0.1 * 2**20 for s in sizes[:-1])


@pytest.mark.unit
def test_inspect_verifies_and_names_the_bad_shard(tmp_path, two_datasets):
    manifest = write(two_datasets, tmp_path)
    report = inspect(tmp_path)
    assert report["samples"] == manifest["samples"] and report["shards"] == len(manifest["shards"])
    toys = two_datasets[1].stats()
    assert report["datasets"]["toys"] == {
        "users": toys.users,
        "items": toys.items,
        "interactions": toys.interactions,
        "samples": manifest["datasets"]["toys"]["samples"],
    }
    assert "all hashes verified" in format_inspect(report)
    shard = tmp_path / "shard-000001.tar"
    blob = bytearray(shard.read_bytes())
    blob[600] ^= 1
    shard.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=r"shard-000001\.tar: shard bytes/sha256 differ"):
        inspect(tmp_path)
    shard.unlink()
    with pytest.raises(DataError, match=r"shard-000001\.tar: shard listed in the manifest is missing"):
        inspect(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(DataError, match="no manifest: not a corpus"):
        inspect(tmp_path)


@pytest.mark.unit
def test_failed_write_leaves_no_shard_and_no_manifest(tmp_path, two_datasets, monkeypatch):
    real = shards.write_shard

    def fail_on_third(plan, index, out_dir):
        if index == 2:
            raise OSError("disk full")
        return real(plan, index, out_dir)

    monkeypatch.setattr(shards, "write_shard", fail_on_third)
    with pytest.raises(OSError, match="disk full"):
        write(two_datasets, tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(shards, "write_shard", real)
    write(two_datasets, tmp_path)
    with pytest.raises(ValueError, match="already holds a corpus"):
        write(two_datasets, tmp_path)


@pytest.fixture
def own_ray():
    """Shut down the in-process Ray afterwards if this test started it (other test files init their own)."""
    ray = pytest.importorskip("ray")
    started_here = not ray.is_initialized()
    yield
    if started_here:
        ray.shutdown()


@pytest.mark.integration
def test_ray_data_engine_writes_the_same_bytes_as_the_local_engine(tmp_path, two_datasets, own_ray):
    local = write(two_datasets, tmp_path / "local")
    ray_run = write(two_datasets, tmp_path / "ray", engine="ray")
    assert ray_run["shards"] == local["shards"] and len(local["shards"]) > 2
    assert inspect(tmp_path / "ray")["samples"] == local["samples"]
