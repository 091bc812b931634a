"""prepare(): real readers on P5 fixture files -> corpus layout, determinism, counts read back, Fusion
with zero-shot corpora, atomic replace, and bad input leaving nothing behind."""

from __future__ import annotations

import json
import tomllib
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from fusionrec.data_pipeline import shards
from fusionrec.data_pipeline.config import DataConfig, DatasetSpec, FusionConfig, ShardConfig
from fusionrec.data_pipeline.errors import DataError
from fusionrec.data_pipeline.fusion import LeakageError
from fusionrec.data_pipeline.prepare import prepare, prepare_one
from fusionrec.data_pipeline.shards import inspect

REPO = Path(__file__).resolve().parents[1]
LOCAL = ShardConfig(engine="local", samples_per_shard=50)


def write_p5(
    folder: Path, prefix: str, n_users: int, n_items: int, per_user: int = 6, extra: str = ""
) -> Path:
    """A 5-core P5 dataset: user k has items k..k+per_user-1 (cyclic), so each item has per_user users."""
    folder.mkdir(parents=True, exist_ok=True)
    items = [f"{prefix}{j:03d}" for j in range(n_items)]
    (folder / "item_plain_text.txt").write_text(
        "".join(f"{i} title: thing {i}; brand: b{i[-1]}\n" for i in items)
    )
    lines = [f"u{k} " + " ".join(items[(k + j) % n_items] for j in range(per_user)) for k in range(n_users)]
    (folder / "user_sequence.txt").write_text("\n".join(lines) + "\n" + extra)
    return folder


def config(root: Path, names: list[str], **kw) -> DataConfig:
    specs = [DatasetSpec(n, "p5", str(root / n)) for n in names]
    return DataConfig(datasets=specs, shards=kw.pop("shards", LOCAL), **kw)


def read_back(out: Path) -> list[dict]:
    urls = [str(p) for p in sorted(out.glob("shard-*.tar"))]
    return [json.loads(s["json"]) for s in wds.WebDataset(urls, shardshuffle=False)]


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture
def raw(tmp_path) -> Path:
    root = tmp_path / "raw"
    write_p5(root / "beauty", "B", 14, 10)
    write_p5(root / "toys", "T", 9, 7, per_user=5)
    write_p5(root / "music", "M", 8, 8)
    return root


@pytest.mark.integration
def test_prepare_layout_counts_and_two_runs_identical(tmp_path, raw):
    cfg = config(raw, ["beauty", "toys"])
    first = prepare(cfg, tmp_path / "out", config_text="[data]\nkcore = 5\n")
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    # beauty: 14 users x 6 items -> train 14 * 3, valid 14, test 14; toys: 9 users x 5 -> train 9 * 2.
    assert manifest["datasets"]["beauty"]["samples"] == {"train": 42, "valid": 14, "test": 14}
    assert manifest["datasets"]["toys"]["samples"] == {"train": 18, "valid": 9, "test": 9}
    assert (manifest["datasets"]["beauty"]["users"], manifest["datasets"]["beauty"]["items"]) == (14, 10)
    assert manifest["datasets"]["toys"]["density"] == pytest.approx(45 / (9 * 7))
    got = read_back(out)
    assert len(got) == manifest["samples"] == 42 + 28 + 18 + 18
    assert Counter((s["dataset"], s["split"]) for s in got) == Counter(
        {("beauty", "train"): 42, ("beauty", "valid"): 14, ("beauty", "test"): 14}
        | {("toys", "train"): 18, ("toys", "valid"): 9, ("toys", "test"): 9}
    )
    test_u3 = next(s for s in got if s["user"] == "beauty:u3" and s["split"] == "test")
    assert test_u3 == {
        "dataset": "beauty",
        "user": "beauty:u3",
        "split": "test",
        "history": [f"beauty:B{j:03d}" for j in range(3, 8)],
        "target": "beauty:B008",  # the user's last item
    }
    assert sorted(manifest["sources"]) == sorted(
        str((raw / n / f).resolve())
        for n in ("beauty", "toys")
        for f in ("user_sequence.txt", "item_plain_text.txt")
    )
    items = pq.read_table(out / "items.parquet")
    assert items.num_rows == 17 and items["item_id"][0].as_py() == "beauty:B000"
    assert items["text"][0].as_py() == "title: thing B000; brand: b0"
    seqs = pq.read_table(out / "processed" / "toys" / "sequences.parquet")
    assert seqs["item_ids"][0].as_py() == [f"toys:T{j:03d}" for j in range(5)]
    assert (out / "config.toml").read_text() == "[data]\nkcore = 5\n"
    assert inspect(out)["samples"] == manifest["samples"]
    # Second run over the existing corpus: replaced cleanly, byte-identical shards, nothing left over.
    second = prepare(cfg, out)
    assert [s["sha256"] for s in second["manifest"]["shards"]] == [
        s["sha256"] for s in first["manifest"]["shards"]
    ]
    assert leftovers(tmp_path) == [] and not (out / "config.toml").exists()


@pytest.mark.integration
def test_fusion_prepare_writes_zero_shot_corpora_and_checks_leakage(tmp_path, raw):
    fusion = FusionConfig(pretrain=["beauty", "toys"], zeroshot=["music"], user_cap=10)
    result = prepare(config(raw, ["beauty", "toys", "music"], fusion=fusion), tmp_path / "out")
    out = tmp_path / "out"
    assert result["manifest"]["datasets"]["beauty"]["users"] == 10  # capped from 14
    assert result["manifest"]["skipped"]["beauty/user_cap_users"] == 4
    assert result["manifest"]["datasets"]["toys"]["users"] == 9
    zs = inspect(out / "zeroshot" / "music")
    assert zs["datasets"]["music"]["users"] == 8 and zs["samples"] == 8 * 5
    assert inspect(out)["zeroshot"]["music"] == zs
    assert {s["dataset"] for s in read_back(out)} == {"beauty", "toys"}
    # The same user ids u0.. occur in every P5 file without being the same people: not leakage by default
    # (above); declared global, they are reported as leakage.
    assert result["policies"]["music"]["user_ids"] == "per_dataset"
    strict = FusionConfig(pretrain=["beauty", "toys"], zeroshot=["music"], user_namespace="global")
    with pytest.raises(LeakageError, match=r"'music' leaks into the pretraining corpus \(beauty, toys\)"):
        prepare(config(raw, ["beauty", "toys", "music"], fusion=strict), tmp_path / "strict")
    assert not (tmp_path / "strict").exists() and leftovers(tmp_path) == []


@pytest.mark.integration
def test_bad_input_midway_leaves_nothing_and_keeps_the_previous_corpus(tmp_path, raw):
    out = tmp_path / "out"
    write_p5(raw / "broken", "X", 8, 8, extra="u99 X000 NOPE X001\n")  # unknown item id on line 9
    with pytest.raises(DataError, match=r"broken/user_sequence.txt:9: unknown item id 'NOPE'"):
        prepare(config(raw, ["beauty", "broken"]), out)
    assert not out.exists() and leftovers(tmp_path) == []
    # A user with 2 items (P5 sets are not k-cored by default) cannot be split: an error when configured so.
    write_p5(raw / "short", "S", 8, 8, extra="u99 S000 S001\n")
    with pytest.raises(DataError, match=r"dataset 'short': 1 user\(s\) have < 3 items.*u99 \(2 items\)"):
        prepare(config(raw, ["short"], kcore=1, short_users="error"), out)
    assert not out.exists() and leftovers(tmp_path) == []
    # Default policy: skipped and counted in the manifest.
    prepare(config(raw, ["short"], kcore=1), out)
    before = json.loads((out / "manifest.json").read_text())
    assert before["skipped"]["short/short_user"] == 1


@pytest.mark.integration
def test_failure_while_writing_shards_keeps_previous_corpus(tmp_path, raw, monkeypatch):
    out = tmp_path / "out"
    prepare(config(raw, ["beauty"]), out)
    before = inspect(out)

    def boom(plan, index, out_dir):
        raise OSError("disk full")

    monkeypatch.setattr(shards, "write_shard", boom)
    with pytest.raises(OSError, match="disk full"):
        prepare(config(raw, ["beauty", "toys"]), out)
    assert inspect(out) == before and leftovers(tmp_path) == []
    (tmp_path / "notacorpus").mkdir()
    (tmp_path / "notacorpus" / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="is not a fusionrec corpus"):
        prepare(config(raw, ["beauty"]), tmp_path / "notacorpus")


@pytest.mark.integration
def test_one_dataset_form_namespaces_with_the_folder_name(tmp_path, raw):
    result = prepare_one("p5", raw / "toys", tmp_path / "out", base=DataConfig(shards=LOCAL))
    assert list(result["manifest"]["datasets"]) == ["toys"]
    assert {s["user"].split(":")[0] for s in read_back(tmp_path / "out")} == {"toys"}


@pytest.mark.unit
def test_fusion_paper_config_has_the_19_6_split():
    data = tomllib.loads((REPO / "launch" / "configs" / "fusion_paper.toml").read_text())["data"]
    cfg = DataConfig.from_dict(data)
    assert len(cfg.fusion.pretrain) == 19 and cfg.fusion.user_cap == 30000
    assert cfg.fusion.zeroshot == ["sports", "beauty", "toys", "music", "instruments", "yelp"]
    categories = {d.name: d.category for d in cfg.datasets}
    assert categories["beauty"] == "Beauty" and categories["instruments"] == "Musical_Instruments"
    assert {d.format for d in cfg.datasets} == {"amazon2014", "yelp"}
    with pytest.raises(ValueError, match=r"unknown config key\(s\): data.fusion.usercap"):
        DataConfig.from_dict({**data, "fusion": {**data["fusion"], "usercap": 5}})


@pytest.mark.slow
def test_amazon_beauty_corpus_through_ray(tmp_path, shared_data):
    ray = pytest.importorskip("ray")
    started_here = not ray.is_initialized()
    try:
        cfg = DataConfig(
            datasets=[DatasetSpec("beauty", "p5", str(shared_data / "amazon_beauty"))],
            shards=ShardConfig(target_mb=32),
        )
        manifest = prepare(cfg, tmp_path / "beauty")["manifest"]
    finally:
        if started_here:
            ray.shutdown()
    stats = manifest["datasets"]["beauty"]
    assert (stats["users"], stats["items"], stats["interactions"]) == (22363, 12101, 198502)
    seqs = pq.read_table(tmp_path / "beauty" / "processed" / "beauty" / "sequences.parquet").to_pydict()
    last = {u: items[-1] for u, items in zip(seqs["user_id"], seqs["item_ids"], strict=True)}
    assert stats["samples"]["train"] == sum(len(s) - 3 for s in seqs["item_ids"]) == 131413
    got = read_back(tmp_path / "beauty")
    tests = [s for s in got if s["split"] == "test"]
    assert len(tests) == 22363 and all(s["target"] == last[s["user"]] for s in tests)
    assert len(got) == manifest["samples"] == 131413 + 2 * 22363


@pytest.mark.unit
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kcore": 0}, r"data.kcore=0"),
        ({"max_history": 0}, r"data.max_history=0"),
        ({"missing_text": "guess"}, r"data.missing_text='guess'"),
        ({"short_users": "keep"}, r"data.short_users='keep'"),
        ({"datasets": [{"name": "a:b", "format": "p5", "input": "x"}]}, r"name='a:b'"),
        ({"datasets": [{"name": "a", "format": "csv", "input": "x"}]}, r"format='csv'"),
        ({"shards": {"target_mb": 0}}, r"data.shards.target_mb=0"),
        ({"shards": {"engine": "spark"}}, r"data.shards.engine='spark'"),
        ({"fusion": {"user_cap": -1}}, r"data.fusion.user_cap=-1"),
        ({"fusion": {"on_leakage": "ignore"}}, r"data.fusion.on_leakage='ignore'"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**kwargs)
