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

pytestmark = pytest.mark.unit


# ------------------------------------------------------------------------------------------ corpora


def make_samples(datasets: dict[str, int], seed: int = 0) -> list[dict]:
    """Leave-one-out samples of `n` synthetic users per dataset (lengths 3..7), as in DESIGN.md."""
    samples = []
    for name, users in datasets.items():
        for u in range(users):
            items = [f"{name}:i{(u * 7 + k * 3 + seed) % 50}" for k in range(3 + (u + seed) % 5)]
            for t in range(1, len(items) - 2):
                samples.append(
                    {
                        "dataset": name,
                        "user": f"u{u}",
                        "split": "train",
                        "history": items[:t],
                        "target": items[t],
                    }
                )
            samples.append(
                {
                    "dataset": name,
                    "user": f"u{u}",
                    "split": "valid",
                    "history": items[:-2],
                    "target": items[-2],
                }
            )
            samples.append(
                {
                    "dataset": name,
                    "user": f"u{u}",
                    "split": "test",
                    "history": items[:-1],
                    "target": items[-1],
                }
            )
    return samples


def write_corpus(root: Path, samples: list[dict], shard_sizes: list[int]) -> Path:
    """Shards + manifest.json in the format of docs/ARCHITECTURE.md (deterministic tar headers)."""
    assert sum(shard_sizes) == len(samples)
    root.mkdir(parents=True, exist_ok=True)
    entries, start, seen = [], 0, collections.Counter()
    for i, n in enumerate(shard_sizes):
        name, buf = f"shard-{i:06d}.tar", io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for s in samples[start : start + n]:
                key = f"{s['dataset']}_{s['user']}_{s['split']}_{seen[(s['dataset'], s['user'], s['split'])]}"
                seen[(s["dataset"], s["user"], s["split"])] += 1
                data = json.dumps(s).encode()
                info = tarfile.TarInfo(f"{key}.json")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
        raw = buf.getvalue()
        (root / name).write_bytes(raw)
        entries.append(
            {"name": name, "samples": n, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
        )
        start += n
    per_ds: dict = collections.defaultdict(lambda: {"train": 0, "valid": 0, "test": 0})
    for s in samples:
        per_ds[s["dataset"]][s["split"]] += 1
    manifest = {
        "schema_version": 1,
        "shards": entries,
        "samples": len(samples),
        "splits": {k: sum(d[k] for d in per_ds.values()) for k in ("train", "valid", "test")},
        "datasets": {name: {"samples": d} for name, d in per_ds.items()},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


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


def test_position_order_matches_order_keys(corpus):
    root, _ = corpus
    ds = ShardDataset(root, LoaderConfig(seed=5, splits=["train", "valid", "test"], even_batches=False))
    seen = sorted((s["_pos"], s["__key__"]) for s in ds)
    assert [k for _, k in seen] == ds.order_keys()


# --------------------------------------------------------------------------------------------- order


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


def test_not_a_corpus(tmp_path):
    with pytest.raises(DataError, match="not a corpus: no manifest.json"):
        ShardDataset(tmp_path)


def test_missing_and_corrupt_shards(tmp_path):
    samples = make_samples({"beauty": 5})
    root = write_corpus(tmp_path / "c", samples, [10, len(samples) - 10])
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


def test_unknown_dataset_filter(corpus):
    root, _ = corpus
    with pytest.raises(ValueError, match=r"loader.datasets: \['movies'\] not in this corpus"):
        ShardDataset(root, LoaderConfig(datasets=["movies"]))
