"""ShardDataset / ShardLoader: exactly once per epoch, resumable across topologies, clear errors."""

from __future__ import annotations

import collections
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from fusionrec.data_pipeline.errors import DataError
from fusionrec.data_pipeline.loader import (
    LoaderConfig,
    ShardDataset,
    ShardLoader,
    merge_states,
)

# ------------------------------------------------------------------------------------------ corpora


def make_samples(datasets: dict[str, int], seed: int = 0) -> list[dict]:
    """Leave-one-out samples of `n` synthetic users per dataset (lengths 3..7), as in DESIGN.md."""
    samples = []
    for name, users in datasets.items():
        for u in range(users):
            items = [f"{name}:i{(u * 7 + k * 3 + seed) % 50}" for k in range(3 + (u + seed) % 5)]
            targets = [("train", t) for t in range(1, len(items) - 2)]
            for split, t in targets + [("valid", len(items) - 2), ("test", len(items) - 1)]:
                samples.append(
                    {
                        "dataset": name,
                        "user": f"u{u}",
                        "split": split,
                        "history": items[:t],
                        "target": items[t],
                    }
                )
    return samples


def write_shards(
    root: Path, shards: list[list[tuple[str, bytes]]], fmt=tarfile.USTAR_FORMAT, meta=None
) -> Path:
    """Tar shards of (member name, payload) + a manifest.json over them (docs/ARCHITECTURE.md layout)."""
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, members in enumerate(shards):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644  # bytes depend on content only
                tar.addfile(info, io.BytesIO(data))
        raw = buf.getvalue()
        (root / f"shard-{i:06d}.tar").write_bytes(raw)
        entry = {"name": f"shard-{i:06d}.tar", "samples": len(members), "bytes": len(raw)}
        entries.append({**entry, "sha256": hashlib.sha256(raw).hexdigest()})
    manifest = {"schema_version": 1, "shards": entries, **(meta or {})}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def write_corpus(root: Path, samples: list[dict], shard_sizes: list[int], **kwargs) -> Path:
    """`samples` cut into shards of the given sizes; keys `<dataset>_<user>_<split>_<n>`."""
    assert sum(shard_sizes) == len(samples)
    seen: collections.Counter = collections.Counter()
    members = []
    for s in samples:
        ident = (s["dataset"], s["user"], s["split"])
        members.append((f"{'_'.join(ident)}_{seen[ident]}.json", json.dumps(s).encode()))
        seen[ident] += 1
    cuts = [sum(shard_sizes[:i]) for i in range(len(shard_sizes) + 1)]
    shards = [members[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    per_ds: dict = collections.defaultdict(collections.Counter)
    for s in samples:
        per_ds[s["dataset"]][s["split"]] += 1
    meta = {"samples": len(samples), "datasets": {name: {"samples": dict(c)} for name, c in per_ds.items()}}
    return write_shards(root, shards, meta=meta, **kwargs)


def canon(sample: dict) -> str:
    """A sample's identity: its json content without the loader's bookkeeping fields."""
    return json.dumps({k: v for k, v in sample.items() if not k.startswith("_")}, sort_keys=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[dict]]:
    samples = make_samples({"beauty": 30, "toys": 20})
    sizes = [40, 1, 55, 0, 31]
    sizes.append(len(samples) - sum(sizes))
    return write_corpus(tmp_path_factory.mktemp("corpus"), samples, sizes), samples


def expected(samples: list[dict], splits=("train",), key_fn=None) -> collections.Counter:
    return collections.Counter(json.dumps(s, sort_keys=True) for s in samples if s["split"] in splits)


def real(batches) -> list[dict]:
    return [s for b in batches for s in b if not s["_pad"]]


def run(loader: ShardLoader, stop_after: int | None = None) -> list[list[dict]]:
    out = []
    for batch in loader:
        out.append(batch)
        if stop_after is not None and len(out) == stop_after:
            break
    return out


def loaders(root, world, cfg) -> list[ShardLoader]:
    return [ShardLoader(ShardDataset(root, cfg, rank=r, world_size=world)) for r in range(world)]


# ---------------------------------------------------------------------------------------- exactness


@pytest.mark.unit
def test_epoch_exact_over_2_ranks_x_2_workers(corpus):
    root, samples = corpus
    cfg = LoaderConfig(batch_size=4, num_workers=2, seed=3)
    per_rank = [run(ld) for ld in loaders(root, 2, cfg)]
    got = collections.Counter(canon(s) for batches in per_rank for s in real(batches))
    assert got == expected(samples)
    counts = [len(real(b)) for b in per_rank]
    assert sum(counts) == sum(s["split"] == "train" for s in samples) and abs(counts[0] - counts[1]) <= 1
    # even_batches: same number of full batches on both ranks; pads flagged and never a real position
    assert len(per_rank[0]) == len(per_rank[1])
    assert all(len(b) == 4 for batches in per_rank for b in batches)
    pads = [s for batches in per_rank for b in batches for s in b if s["_pad"]]
    assert pads and all(s["_pos"] == -1 for s in pads)


@pytest.mark.unit
def test_counts_and_positions_are_a_permutation(corpus):
    root, samples = corpus
    n_train = sum(s["split"] == "train" for s in samples)
    cfg = LoaderConfig(batch_size=5, even_batches=False)
    datasets = [ShardDataset(root, cfg, rank=r, world_size=3) for r in range(3)]
    assert [d.num_samples() for d in datasets] == [-(-(n_train - r) // 3) for r in range(3)]
    positions = sorted(s["_pos"] for d in datasets for s in d)
    assert positions == list(range(n_train))
    assert all(d.num_samples() == 0 for d in datasets)
    assert sum(ShardLoader(ShardDataset(root, cfg)).__len__() for _ in [0]) == -(-n_train // 5)


@pytest.mark.unit
def test_position_order_matches_order_keys(corpus):
    root, _ = corpus
    ds = ShardDataset(root, LoaderConfig(seed=5, splits=["train", "valid", "test"], even_batches=False))
    seen = sorted((s["_pos"], s["__key__"]) for s in ds)
    assert [k for _, k in seen] == ds.order_keys()


# --------------------------------------------------------------------------------------------- order


@pytest.mark.unit
def test_order_depends_only_on_seed_and_epoch(corpus):
    root, samples = corpus
    a = ShardDataset(root, LoaderConfig(seed=7, even_batches=False))
    b = ShardDataset(root, LoaderConfig(seed=7, batch_size=3), rank=1, world_size=2)
    assert a.order_keys() == b.order_keys()
    epoch0 = [s["__key__"] for s in a]
    a.set_epoch(1)
    epoch1 = [s["__key__"] for s in a]
    assert epoch0 != epoch1 and sorted(epoch0) == sorted(epoch1)
    assert len(set(epoch0)) == len(epoch0) == sum(s["split"] == "train" for s in samples)
    assert ShardDataset(root, LoaderConfig(seed=8)).order_keys() != epoch0
    a.set_epoch(0)
    assert [s["__key__"] for s in a] == epoch0
    unshuffled = ShardDataset(
        root, LoaderConfig(shuffle=False, splits=["train", "valid", "test"], even_batches=False)
    )
    assert [canon(s) for s in unshuffled] == [json.dumps(s, sort_keys=True) for s in samples]


# -------------------------------------------------------------------------------------------- resume


@pytest.mark.unit
@pytest.mark.parametrize("persistent", [False, True])
def test_resume_same_topology_continues_the_exact_stream(corpus, persistent):
    root, _ = corpus
    cfg = LoaderConfig(batch_size=3, num_workers=2, seed=1, persistent_workers=persistent)
    full = [run(ld) for ld in loaders(root, 2, cfg)]
    first = loaders(root, 2, cfg)
    head = [run(ld, stop_after=5) for ld in first]  # 5: odd, so worker 0 delivered one batch more
    state = merge_states([ld.state_dict() for ld in first])
    assert sum(b - a for a, b in state["consumed"]) == 2 * 5 * 3
    resumed = loaders(root, 2, cfg)
    for ld in resumed:
        ld.load_state_dict(state)
    tail = [run(ld) for ld in resumed]
    for r in range(2):
        assert [[s["__key__"] for s in b] for b in head[r] + tail[r]] == [
            [s["__key__"] for s in b] for b in full[r]
        ]


@pytest.mark.unit
def test_resume_on_3_ranks_x_1_worker_is_still_one_epoch(corpus):
    root, samples = corpus
    cfg = LoaderConfig(batch_size=4, num_workers=2, seed=2)
    first = loaders(root, 2, cfg)
    head = [run(ld, stop_after=3) for ld in first]
    state = merge_states([ld.state_dict() for ld in first])
    cfg3 = LoaderConfig(batch_size=4, num_workers=0, seed=2)
    resumed = loaders(root, 3, cfg3)
    for ld in resumed:
        ld.load_state_dict(state)
    remaining = [ld.dataset.num_samples() for ld in resumed]
    assert max(remaining) - min(remaining) <= 1
    tail = [run(ld) for ld in resumed]
    assert len({len(t) for t in tail}) == 1  # equal steps on every rank
    got = collections.Counter(canon(s) for part in head + tail for s in real(part))
    assert got == expected(samples)
    # ... and resume once more, mid-way, on 1 rank x 2 workers
    again = loaders(root, 3, cfg3)
    for ld in again:
        ld.load_state_dict(state)
    mid = [run(ld, stop_after=2) for ld in again]
    state2 = merge_states([ld.state_dict() for ld in again])
    last = ShardLoader(ShardDataset(root, LoaderConfig(batch_size=4, num_workers=2, seed=2)))
    last.load_state_dict(state2)
    rest = run(last)
    got = collections.Counter(canon(s) for part in head + mid + [rest] for s in real(part))
    assert got == expected(samples)


@pytest.mark.unit
def test_prefetched_but_not_received_is_not_consumed(corpus):
    root, samples = corpus
    cfg = LoaderConfig(batch_size=2, num_workers=2, prefetch_factor=4)
    ld = ShardLoader(ShardDataset(root, cfg))
    head = run(ld, stop_after=3)  # workers have prefetched ~8 batches by now
    state = ld.state_dict()
    assert sorted(p for a, b in state["consumed"] for p in range(a, b)) == sorted(
        s["_pos"] for s in real(head)
    )
    ld2 = ShardLoader(ShardDataset(root, cfg))
    ld2.load_state_dict(state)
    got = collections.Counter(canon(s) for s in real(head) + real(run(ld2)))
    assert got == expected(samples)


@pytest.mark.unit
def test_direct_iteration_tracks_each_yielded_sample(corpus):
    root, samples = corpus
    cfg = LoaderConfig(splits=["valid", "test"], even_batches=False)
    ds = [ShardDataset(root, cfg, rank=r, world_size=2) for r in range(2)]
    its = [iter(d) for d in ds]
    head = [next(its[0]) for _ in range(7)] + [next(its[1]) for _ in range(4)]
    state = merge_states([d.state_dict() for d in ds])
    fresh = ShardDataset(root, cfg)  # 1 rank resumes what 2 ranks started
    fresh.load_state_dict(state)
    assert fresh.num_samples() == sum(s["split"] != "train" for s in samples) - 11
    got = collections.Counter(canon(s) for s in head + list(fresh))
    assert got == expected(samples, splits=("valid", "test"))


@pytest.mark.unit
def test_persistent_workers_across_epochs(corpus):
    root, samples = corpus
    ld = ShardLoader(ShardDataset(root, LoaderConfig(batch_size=8, num_workers=2, persistent_workers=True)))
    epochs = []
    for epoch in range(2):
        ld.set_epoch(epoch)
        epochs.append([s["__key__"] for s in real(run(ld))])
    assert epochs[0] != epochs[1]
    for keys in epochs:
        assert sorted(keys) == sorted(set(keys)) and len(keys) == sum(s["split"] == "train" for s in samples)
    assert list(ld) == []  # epoch 1 fully consumed: nothing until set_epoch(2)
    ld.close()


@pytest.mark.unit
def test_custom_collate_joins_an_id_table(corpus):
    root, _ = corpus
    table = {f"{d}:i{k}": k + (100 if d == "toys" else 0) for d in ("beauty", "toys") for k in range(50)}

    def collate(batch: list[dict]) -> dict:
        return {
            "target": torch.tensor([table[s["target"]] for s in batch]),
            "mask": torch.tensor([not s["_pad"] for s in batch]),
            "keys": [s["__key__"] for s in batch],
        }

    ds = ShardDataset(root, LoaderConfig(batch_size=6, num_workers=1, datasets=["toys"]))
    batches = list(ShardLoader(ds, collate))
    assert all(b["target"].shape == (6,) for b in batches)
    targets = torch.cat([b["target"][b["mask"]] for b in batches])
    assert bool((targets >= 100).all()) and len(targets) == sum(1 for k in ds.order_keys())


# ---------------------------------------------------------------------------------------- selection


@pytest.mark.unit
def test_split_dataset_filters_and_max_samples(corpus):
    root, samples = corpus
    ds = ShardDataset(root, LoaderConfig(splits=["test"], datasets=["beauty"], batch_size=7))
    got = list(ds)
    assert ds.total == 30 and {(s["dataset"], s["split"]) for s in got} == {("beauty", "test")}
    assert len(got) == 35 and sum(s["_pad"] for s in got) == 5  # padded to full batches of 7
    small = ShardDataset(
        root,
        LoaderConfig(max_samples=45, splits=["train", "valid", "test"], shuffle=False, even_batches=False),
    )
    assert [canon(s) for s in small] == [json.dumps(s, sort_keys=True) for s in samples[:45]]


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.unit
def test_not_a_corpus(tmp_path):
    with pytest.raises(DataError, match="not a corpus: no manifest.json"):
        ShardDataset(tmp_path)


@pytest.mark.unit
def test_missing_and_corrupt_shards(tmp_path):
    samples = make_samples({"beauty": 5})
    root = write_corpus(tmp_path / "c", samples, [10, len(samples) - 10])
    assert ShardDataset(root).total == sum(s["split"] == "train" for s in samples)
    shard = root / "shard-000001.tar"
    raw = shard.read_bytes()
    shard.write_bytes(raw[:-512])
    with pytest.raises(DataError, match=r"shard-000001.tar: size \d+ bytes != manifest bytes"):
        ShardDataset(root)
    shard.write_bytes(raw.replace(b'"split": "train"', b'"split": "trian"', 1))
    with pytest.raises(DataError, match="shard-000001.tar: sha256 mismatch"):
        ShardDataset(root)
    shard.unlink()
    with pytest.raises(DataError, match="shard-000001.tar: shard listed in manifest.json is missing"):
        ShardDataset(root)


@pytest.mark.unit
def test_state_from_another_corpus_or_selection(tmp_path, corpus):
    root, _ = corpus
    other = write_corpus(
        tmp_path / "other", make_samples({"beauty": 4}), [8, len(make_samples({"beauty": 4})) - 8]
    )
    state = ShardDataset(other).state_dict()
    with pytest.raises(ValueError, match="loader state is from another corpus: manifest sha256"):
        ShardDataset(root).load_state_dict(state)
    state = ShardDataset(root, LoaderConfig(splits=["valid"])).state_dict()
    with pytest.raises(ValueError, match="loader state selection="):
        ShardDataset(root).load_state_dict(state)


@pytest.mark.unit
def test_unmerged_state_on_a_new_topology_is_refused(corpus):
    root, _ = corpus
    cfg = LoaderConfig(batch_size=4)
    lds = loaders(root, 2, cfg)
    run(lds[0], stop_after=1)
    with pytest.raises(ValueError, match=r"holds ranks \[0\] of a 2-rank run"):
        ShardDataset(root, cfg, rank=0, world_size=3).load_state_dict(lds[0].state_dict())
    same = ShardDataset(root, cfg, rank=0, world_size=2)
    same.load_state_dict(lds[0].state_dict())  # same topology: a rank's own state is enough
    assert same.num_samples() == lds[0].dataset.num_samples()


@pytest.mark.unit
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"splits": ["dev"]}, "loader.splits"),
        ({"max_samples": 0}, "loader.max_samples"),
        ({"batch_size": 0}, "loader.batch_size"),
        ({"persistent_workers": True}, "persistent_workers"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoaderConfig(**kwargs)


@pytest.mark.unit
def test_unknown_dataset_filter(corpus):
    root, _ = corpus
    with pytest.raises(ValueError, match=r"loader.datasets: \['movies'\] not in this corpus"):
        ShardDataset(root, LoaderConfig(datasets=["movies"]))


@pytest.mark.unit
def test_manifest_count_mismatch(tmp_path):
    root = write_corpus(tmp_path, make_samples({"beauty": 3}), [len(make_samples({"beauty": 3}))])
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["shards"][0]["samples"] += 1
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"shard-000000.tar: holds \d+ samples, manifest says \d+"):
        ShardDataset(root)


# ---------------------------------------------------------------------------------- tar edge cases


@pytest.mark.unit
def test_pax_headers_long_keys_and_escaped_values(tmp_path):
    """Non-ustar headers go through tarfile; a json value with escapes falls back to json.loads."""
    long_key = "beauty_" + "x" * 150 + "_\u00e9"
    members = [
        (
            f"{long_key}.json",
            json.dumps(
                {"dataset": "beauty", "user": "u", "split": "train", "history": [], "target": "a"}
            ).encode(),
        ),
        (
            "k2.json",
            b'{"dataset": "beauty", "user": "u", "split": "tr\\u0061in", "history": ["a"], "target": "b"}',
        ),
        ("k3.json", b'{"split":"test","dataset":"beauty","user":"u","history":["a","b"],"target":"c"}'),
    ]
    root = write_shards(tmp_path, [members], fmt=tarfile.PAX_FORMAT, meta={"datasets": {"beauty": {}}})
    ds = ShardDataset(root, LoaderConfig(shuffle=False, even_batches=False))
    assert [s["__key__"] for s in ds] == [long_key, "k2"]
    test = ShardDataset(root, LoaderConfig(splits=["test"], even_batches=False))
    assert [(s["__key__"], s["target"]) for s in test] == [("k3", "c")]


@pytest.mark.unit
def test_fast_header_walk_equals_tarfile(corpus):
    from fusionrec.data_pipeline.loader import _tar_members, _tar_members_slow

    root, _ = corpus
    data = (root / "shard-000000.tar").read_bytes()
    assert _tar_members(data, root, checksums=True) == _tar_members_slow(data, root)


@pytest.mark.unit
def test_corrupt_header_without_sha_check_and_bad_json_at_read(tmp_path):
    good = json.dumps({"dataset": "d", "user": "u", "split": "train", "history": [], "target": "a"}).encode()
    root = write_shards(
        tmp_path, [[("a.json", good), ("b.json", b'{"split": "train", "dataset": "d", oops')]]
    )
    ds = ShardDataset(root, LoaderConfig(shuffle=False))  # open only reads the split field
    with pytest.raises(DataError, match=r"shard-000000.tar: member 'b.json': invalid JSON"):
        list(ds)
    shard = root / "shard-000000.tar"
    raw = bytearray(shard.read_bytes())
    raw[0] = ord("z")  # first member's name: the header checksum no longer matches
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"shard-000000.tar: corrupt tar header at byte 0 \(checksum\)"):
        ShardDataset(root, LoaderConfig(verify=False))
    with pytest.raises(DataError, match="sha256 mismatch"):
        ShardDataset(root)


# ----------------------------------------------------------------------------------- real processes


def _gather_worker(rank: int, root: str, port: int, out: str) -> None:
    import torch.distributed as dist
    from fusionrec.data_pipeline.loader import gather_state

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        loader = ShardLoader(ShardDataset(root, LoaderConfig(batch_size=4, seed=9), rank=rank, world_size=2))
        seen = real(run(loader, stop_after=2 + rank))  # ranks stop at different points
        merged = gather_state(loader.state_dict())
        Path(out, f"rank{rank}.json").write_text(
            json.dumps({"state": merged, "seen": [canon(s) for s in seen]})
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_gather_state_across_two_gloo_processes(corpus, tmp_path):
    import socket

    import torch.multiprocessing as tmp_mp

    root, samples = corpus
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # spawn, not fork: a forked child would inherit a process group an earlier in-process test left
    # initialised in this pytest process ("trying to initialize the default process group twice").
    tmp_mp.start_processes(
        _gather_worker, args=(str(root), port, str(tmp_path)), nprocs=2, start_method="spawn"
    )
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0]["state"] == results[1]["state"]
    assert sorted(results[0]["state"]["ranks"]) == ["0", "1"]
    resumed = ShardDataset(root, LoaderConfig(batch_size=4, seed=9, even_batches=False))  # 1 rank now
    resumed.load_state_dict(results[0]["state"])
    got = collections.Counter(results[0]["seen"] + results[1]["seen"] + [canon(s) for s in resumed])
    assert got == expected(samples)


# ----------------------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_amazon_beauty_epoch_and_resume(shared_data, tmp_path):
    """All 131,413 Beauty train samples (198,502 - 3 x 22,363) exactly once, interrupted and resumed."""
    lines = (shared_data / "amazon_beauty" / "user_sequence.txt").read_text().splitlines()
    samples = []
    for line in lines:
        user, *raw = line.split()
        items = [f"beauty:{i}" for i in raw]
        for split, t in [("train", t) for t in range(1, len(items) - 2)] + [
            ("valid", len(items) - 2),
            ("test", len(items) - 1),
        ]:
            samples.append(
                {"dataset": "beauty", "user": user, "split": split, "history": items[:t], "target": items[t]}
            )
    sizes = [20000] * (len(samples) // 20000) + [len(samples) % 20000]
    root = write_corpus(tmp_path, samples, sizes)
    cfg = LoaderConfig(batch_size=256, num_workers=2, seed=4)
    first = loaders(root, 2, cfg)
    assert sum(ld.dataset.total for ld in first[:1]) == 131413
    head = [run(ld, stop_after=60) for ld in first]
    state = merge_states([ld.state_dict() for ld in first])
    resumed = loaders(root, 3, LoaderConfig(batch_size=256, num_workers=1, seed=4))
    for ld in resumed:
        ld.load_state_dict(state)
    tail = [run(ld) for ld in resumed]
    assert len({len(t) for t in tail}) == 1
    got = collections.Counter(s["__key__"] for part in head + tail for s in real(part))
    assert len(got) == 131413 and set(got.values()) == {1}


@pytest.mark.unit
def test_reads_the_bytes_of_the_project_shard_writer(tmp_path):
    """Shards as data_pipeline/shards.py writes them (GNU headers, '/' keys, long names → 'L' records)."""
    shards = pytest.importorskip("fusionrec.data_pipeline.shards")
    samples = make_samples({"beauty": 6})
    keys = [f"beauty/u{i}/{s['split']}/{i}" + ("-" * 120 if i == 3 else "") for i, s in enumerate(samples)]
    members = [
        shards.tar_member(f"{k}.json", json.dumps(s).encode()) for k, s in zip(keys, samples, strict=True)
    ]
    for i, part in enumerate((members[:5], members[5:])):
        body = b"".join(part)
        (tmp_path / f"shard-{i:06d}.tar").write_bytes(body + shards.tar_end(len(body)))
    entries = []
    for i, n in enumerate((5, len(members) - 5)):
        raw = (tmp_path / f"shard-{i:06d}.tar").read_bytes()
        entries.append(
            {
                "name": f"shard-{i:06d}.tar",
                "samples": n,
                "bytes": len(raw),
                "sha256": hashlib.sha256(raw).hexdigest(),
            }
        )
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 1, "shards": entries}))
    ds = ShardDataset(
        tmp_path, LoaderConfig(splits=["train", "valid", "test"], shuffle=False, even_batches=False)
    )
    got = list(ds)
    assert [s["__key__"] for s in got] == keys
    assert [canon(s) for s in got] == [json.dumps(s, sort_keys=True) for s in samples]
