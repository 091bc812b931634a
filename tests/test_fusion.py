"""Fusion corpus: disjoint lists, seeded per-dataset user cap, namespacing, leakage check and drop."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest
from fusionrec.data_pipeline.config import DataConfig, DatasetSpec, FusionConfig
from fusionrec.data_pipeline.fusion import LeakageError, build_corpora, cap_users, namespace
from fusionrec.data_pipeline.preprocess import ProcessedDataset, preprocess
from fusionrec.data_pipeline.records import INTERACTION_SCHEMA, ITEM_SCHEMA, RawDataset


def make(
    name: str, users: list[str], items: list[str], per_user: int = 5, shuffle_seed=None
) -> ProcessedDataset:
    """Every user buys `per_user` consecutive items (cyclic), so every item also has >= 5 users."""
    rows = [(u, items[(k + j) % len(items)], j) for k, u in enumerate(users) for j in range(per_user)]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(rows)
    u, i, t = zip(*rows, strict=True)
    inter = pa.Table.from_pydict(
        {"user_id": list(u), "item_id": list(i), "timestamp": list(t), "rating": [None] * len(u)},
        schema=INTERACTION_SCHEMA,
    )
    meta = {f.name: [None] * len(items) for f in ITEM_SCHEMA}
    meta["item_id"], meta["title"] = items, [f"title {x}" for x in items]
    raw = RawDataset(name, inter, pa.Table.from_pydict(meta, schema=ITEM_SCHEMA), [f"/src/{name}"], {})
    return preprocess(raw, DataConfig(kcore=5))


def cfg(pretrain, zeroshot, formats=None, **fusion) -> DataConfig:
    formats = formats or {}
    specs = [DatasetSpec(n, formats.get(n, "p5"), f"/in/{n}") for n in [*pretrain, *zeroshot]]
    return DataConfig(datasets=specs, fusion=FusionConfig(pretrain=pretrain, zeroshot=zeroshot, **fusion))


def users(ds: ProcessedDataset) -> list[str]:
    return ds.sequences["user_id"].to_pylist()


@pytest.mark.unit
def test_lists_must_be_disjoint_and_defined():
    with pytest.raises(ValueError, match=r"\['beauty'\] are in both pretrain and zeroshot"):
        FusionConfig(pretrain=["beauty", "home"], zeroshot=["beauty"])
    with pytest.raises(ValueError, match=r"lists datasets \['toys'\] not defined"):
        DataConfig(datasets=[DatasetSpec("home", "p5", "/x")], fusion=FusionConfig(pretrain=["home", "toys"]))
    with pytest.raises(ValueError, match=r"\['home'\] are in neither"):
        DataConfig(
            datasets=[DatasetSpec("home", "p5", "/x"), DatasetSpec("toys", "p5", "/y")],
            fusion=FusionConfig(pretrain=["toys"]),
        )


@pytest.mark.unit
def test_user_cap_is_respected_seeded_and_independent_of_input_order():
    items = [f"I{j}" for j in range(12)]
    big = make("big", [f"u{k}" for k in range(50)], items)
    capped = cap_users(big, 20, seed=3)
    assert capped.sequences.num_rows == 20 and capped.skipped["user_cap_users"] == 30
    assert set(users(capped)) < set(users(big))
    assert users(capped) == [u for u in users(big) if u in set(users(capped))]  # original order kept
    # Same seed, rows of the raw file shuffled -> the same users; another seed -> another sample.
    shuffled = make("big", [f"u{k}" for k in range(50)], items, shuffle_seed=1)
    assert sorted(users(cap_users(shuffled, 20, seed=3))) == sorted(users(capped))
    assert sorted(users(cap_users(big, 20, seed=4))) != sorted(users(capped))
    # Items table holds exactly the items still referenced; interactions = 20 users x 5.
    assert capped.stats().interactions == 100
    assert set(capped.items["item_id"].to_pylist()) == set(
        capped.sequences["item_ids"].combine_chunks().flatten().to_pylist()
    )


@pytest.mark.unit
def test_cap_applies_to_pretraining_only_and_ids_are_namespaced():
    items = [f"I{j}" for j in range(12)]
    data = {
        "home": make("home", [f"u{k}" for k in range(40)], items),
        "kindle": make("kindle", [f"k{k}" for k in range(8)], [f"K{j}" for j in range(8)]),
        "music": make("music", [f"m{k}" for k in range(40)], [f"M{j}" for j in range(12)]),
    }
    corpora = build_corpora(data, cfg(["home", "kindle"], ["music"], user_cap=25))
    home, kindle = corpora.pretrain
    assert home.sequences.num_rows == 25 and kindle.sequences.num_rows == 8
    assert corpora.zeroshot["music"].sequences.num_rows == 40  # zero-shot sets are evaluated whole
    assert all(u.startswith("home:u") for u in users(home))
    assert all(i.startswith("home:I") for i in home.items["item_id"].to_pylist())
    assert corpora.zeroshot["music"].sequences["item_ids"][0].as_py()[0] == "music:M0"
    # Without lists (one dataset, standard evaluation) there is no cap, but ids are still namespaced.
    single = build_corpora({"home": data["home"]}, DataConfig(datasets=[DatasetSpec("home", "p5", "/x")]))
    assert single.pretrain[0].sequences.num_rows == 40 and users(single.pretrain[0])[0] == "home:u0"
    assert single.pretrain[0].items["item_id"].to_pylist()[:2] == ["home:I0", "home:I1"]  # still sorted


@pytest.mark.unit
def test_leakage_of_a_shared_asin_fails_loudly():
    # The same ASIN "B000SHARED" in two Amazon categories: toys (held out) and games (pretraining).
    games = make("games", [f"g{k}" for k in range(10)], [f"G{j}" for j in range(9)] + ["B000SHARED"])
    toys = make("toys", [f"t{k}" for k in range(10)], [f"T{j}" for j in range(9)] + ["B000SHARED"])
    with pytest.raises(
        LeakageError, match=r"'toys' leaks into .*\(games\): 1 shared item id\(s\), e.g. \['B000SHARED'\]"
    ) as err:
        build_corpora({"games": games, "toys": toys}, cfg(["games"], ["toys"]))
    assert isinstance(err.value, ValueError)


@pytest.mark.unit
def test_leakage_drop_removes_shared_users_and_items_from_pretraining_and_counts_them():
    games = make(
        "games", [f"g{k}" for k in range(10)] + ["alice"], [f"G{j}" for j in range(9)] + ["B000SHARED"]
    )
    toys = make(
        "toys", [f"t{k}" for k in range(10)] + ["alice"], [f"T{j}" for j in range(9)] + ["B000SHARED"]
    )
    glob = {"user_namespace": "global"}  # these user ids name the same person in every dataset
    with pytest.raises(LeakageError, match=r"1 shared user id\(s\), e.g. \['alice'\]"):
        build_corpora({"games": games, "toys": toys}, cfg(["games"], ["toys"], **glob))
    corpora = build_corpora(
        {"games": games, "toys": toys}, cfg(["games"], ["toys"], on_leakage="drop", **glob)
    )
    g = corpora.pretrain[0]
    assert "games:alice" not in users(g)
    assert "games:B000SHARED" not in g.items["item_id"].to_pylist()
    flat = g.sequences["item_ids"].combine_chunks().flatten().to_pylist()
    assert "games:B000SHARED" not in flat
    # B000SHARED had 5 interactions among the g-users (positions 9 of the cycle) + alice's 5 are gone.
    before = games.stats().interactions
    assert g.skipped["leakage_users"] == 1
    assert g.stats().interactions == before - g.skipped["leakage_interactions"]
    assert g.skipped["leakage_interactions"] == 5 + sum(
        1 for s in games.sequences["item_ids"].to_pylist()[:10] if "B000SHARED" in s
    )
    assert corpora.zeroshot["toys"].sequences.num_rows == 11  # the held-out side is untouched
    # The default for P5 files ("auto": their user ids are per-file row numbers): only items count.
    only_items = build_corpora({"games": games, "toys": toys}, cfg(["games"], ["toys"], on_leakage="drop"))
    assert "games:alice" in users(only_items.pretrain[0])
    assert only_items.pretrain[0].skipped["leakage_users"] == 0


@pytest.mark.unit
def test_namespace_is_idempotent():
    ds = make("beauty", [f"u{k}" for k in range(6)], [f"I{j}" for j in range(6)])
    once = namespace(ds)
    assert namespace(once) is once
    assert once.sequences["timestamps"].to_pylist() == ds.sequences["timestamps"].to_pylist()


def p5_like(name: str, n_users: int, prefix: str) -> ProcessedDataset:
    """P5 numbering: users u1..uN in every file, items of the dataset's own (ASIN-like) ids."""
    return make(name, [f"u{k}" for k in range(1, n_users + 1)], [f"{prefix}{j:04d}" for j in range(8)])


@pytest.mark.unit
def test_p5_user_numbers_are_per_dataset_by_default_and_the_item_check_stays():
    # Real Toys (u1..u19412) and Beauty (u1..u22363) share every Toys user id without sharing one person.
    beauty, toys = p5_like("beauty", 12, "B"), p5_like("toys", 10, "T")
    corpora = build_corpora({"beauty": beauty, "toys": toys}, cfg(["beauty"], ["toys"]))
    assert corpora.pretrain[0].sequences.num_rows == 12 and not corpora.pretrain[0].skipped
    assert DataConfig.policy(cfg(["beauty"], ["toys"]), "toys").user_ids == "per_dataset"
    # In the corpus the two u1 stay two users.
    assert users(corpora.pretrain[0])[0] == "beauty:u1" and users(corpora.zeroshot["toys"])[0] == "toys:u1"
    # Forcing global user ids reports every toys user, with the advice to declare them per dataset.
    with pytest.raises(LeakageError, match=r"10 shared user id\(s\).*user_namespace='per_dataset'"):
        build_corpora({"beauty": beauty, "toys": toys}, cfg(["beauty"], ["toys"], user_namespace="global"))
    # ASINs are global: a shared item is still leakage with per-dataset users.
    toys_shared = make("toys", [f"u{k}" for k in range(1, 11)], [f"T{j:04d}" for j in range(7)] + ["B0003"])
    with pytest.raises(LeakageError, match=r"1 shared item id\(s\), e.g. \['B0003'\]; 0 shared user"):
        build_corpora({"beauty": beauty, "toys": toys_shared}, cfg(["beauty"], ["toys"]))


@pytest.mark.unit
def test_users_are_compared_only_between_datasets_with_global_ids():
    # Held-out amazon2014 (global reviewer ids) vs a P5 pretraining set (per-file numbers) and an
    # amazon2014 pretraining set: only the amazon2014 pair can share a person.
    p5 = make("p5set", ["rev1", "rev2"] + [f"p{k}" for k in range(8)], [f"P{j}" for j in range(8)])
    home = make("home", ["rev1"] + [f"h{k}" for k in range(9)], [f"H{j}" for j in range(8)])
    held = make("toys", ["rev1", "rev2"] + [f"t{k}" for k in range(8)], [f"T{j}" for j in range(8)])
    formats = {"home": "amazon2014", "toys": "amazon2014"}
    data = {"p5set": p5, "home": home, "toys": held}
    with pytest.raises(LeakageError, match=r"\(home\): 0 shared item id\(s\).*1 shared user id\(s\)"):
        build_corpora(data, cfg(["p5set", "home"], ["toys"], formats))
    corpora = build_corpora(data, cfg(["p5set", "home"], ["toys"], formats, on_leakage="drop"))
    p5_out, home_out = corpora.pretrain
    assert "p5set:rev1" in users(p5_out) and not p5_out.skipped  # a different person: kept
    assert "home:rev1" not in users(home_out) and home_out.skipped["leakage_users"] == 1
    # per_dataset for every dataset: nothing is shared.
    none = build_corpora(data, cfg(["p5set", "home"], ["toys"], formats, user_namespace="per_dataset"))
    assert "home:rev1" in users(none.pretrain[1])


@pytest.mark.unit
def test_user_namespace_is_validated_and_check_users_names_its_replacement():
    with pytest.raises(ValueError, match=r"data.fusion.user_namespace='shared': expected one of"):
        FusionConfig(user_namespace="shared")
    with pytest.raises(ValueError, match=r"data.fusion.check_users was replaced by data.fusion.user_namespace"):
        DataConfig.from_dict({"fusion": {"check_users": False}})
