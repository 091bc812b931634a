"""Synthetic generator: determinism, real-format round trip through the readers, learnable structure."""

from __future__ import annotations

import ast
import collections
import gzip
import hashlib
import json
from pathlib import Path

import pytest
from fusionrec.data_pipeline.readers import read_amazon2014, read_yelp
from fusionrec.data_pipeline.synth import CATEGORY_VOCAB, SynthConfig, synth

SMALL = {"users_per_category": 150, "items_per_category": 80, "yelp_users": 150, "yelp_items": 80}


def file_hashes(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth")
    summary = synth(out, seed=3, categories=("Beauty", "Health", "Toys"), meta_missing_rate=0.05, **SMALL)
    return out, summary


@pytest.mark.unit
def test_same_seed_byte_identical_other_seed_differs(tmp_path: Path) -> None:
    kw = {"categories": ("Sports", "Pet"), **SMALL}
    synth(tmp_path / "a", seed=7, **kw)
    synth(tmp_path / "b", seed=7, **kw)
    synth(tmp_path / "c", seed=8, **kw)
    a, b, c = (file_hashes(tmp_path / x) for x in "abc")
    assert a == b
    assert sorted(a) == sorted(["meta_Pet.json.gz", "meta_Sports.json.gz", "reviews_Pet_5.json.gz",
                                "reviews_Sports_5.json.gz", "synth_summary.json",
                                "yelp_academic_dataset_business.json", "yelp_academic_dataset_review.json"])  # fmt: skip
    assert all(a[k] != c[k] for k in a)
    # gzip header: mtime 0 and no embedded file name (FLG byte 0), so bytes depend on content only
    head = (tmp_path / "a" / "reviews_Pet_5.json.gz").read_bytes()[:10]
    assert head[3] == 0 and head[4:8] == b"\0\0\0\0"


@pytest.mark.unit
def test_category_is_independent_of_the_others(tmp_path: Path) -> None:
    synth(tmp_path / "a", seed=1, categories=("Home",), yelp=False, **SMALL)
    synth(tmp_path / "b", seed=1, categories=("Toys", "Home"), yelp=False, **SMALL)
    a, b = file_hashes(tmp_path / "a"), file_hashes(tmp_path / "b")
    assert a["reviews_Home_5.json.gz"] == b["reviews_Home_5.json.gz"]


@pytest.mark.unit
def test_round_trip_through_readers(small: tuple[Path, dict]) -> None:
    out, summary = small
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind
    for cat in ("Beauty", "Health", "Toys"):
        s = summary["datasets"][cat.lower()]
        ds = read_amazon2014(out, category=cat)
        assert ds.name == cat.lower()
        assert ds.interactions.num_rows == s["reviews"]
        assert len(ds.interactions["user_id"].unique()) == s["users"] == 150
        assert ds.items.num_rows == s["items"]
        assert ds.skipped == {k: v for k, v in (("items_without_meta", s["items_without_meta"]),
                              ("meta_items_without_interactions", s["meta_items_without_interactions"])) if v}  # fmt: skip
        assert (
            s["items_without_meta"] > 0 and s["meta_items_without_interactions"] >= 4
        )  # 5% of 80 listed extra
        pairs = list(
            zip(ds.interactions["user_id"].to_pylist(), ds.interactions["item_id"].to_pylist(), strict=True)
        )
        assert len(pairs) - len(set(pairs)) == s["duplicates"] > 0
        with_meta = ds.items.filter(ds.items["title"].is_valid())
        assert with_meta.num_rows == s["items"] - s["items_without_meta"]
        assert all(c[0] == cat and len(c) >= 3 for c in with_meta["categories"].to_pylist())
    ys = summary["datasets"]["yelp"]
    yelp = read_yelp(out)
    assert yelp.interactions.num_rows == ys["reviews"] and yelp.items.num_rows == ys["items"]
    assert len(yelp.interactions["user_id"].unique()) == 150
    assert yelp.skipped == ({"meta_items_without_interactions": ys["meta_items_without_interactions"]}
                            if ys["meta_items_without_interactions"] else {})  # fmt: skip
    assert all(d in {"Las Vegas, NV", "Phoenix, AZ", "Toronto, ON", "Charlotte, NC"}
               for d in yelp.items["description"].to_pylist())  # fmt: skip


@pytest.mark.unit
def test_real_format_details(small: tuple[Path, dict]) -> None:
    out, _ = small
    with gzip.open(out / "meta_Beauty.json.gz", "rt") as f:
        first = f.readline()
    assert first.startswith("{'asin': 'B00")  # a Python dict literal, not JSON
    rec = ast.literal_eval(first)
    assert {"asin", "title", "imUrl", "related", "categories"} <= set(rec)
    assert isinstance(rec["categories"][0], list) and set(rec["related"]) >= {"also_bought", "also_viewed"}
    with gzip.open(out / "reviews_Beauty_5.json.gz", "rt") as f:
        review = json.loads(f.readline())
    assert list(review) == ["reviewerID", "asin", "reviewerName", "helpful", "reviewText", "overall", "summary",
                            "unixReviewTime", "reviewTime"]  # fmt: skip
    assert review["unixReviewTime"] % 86400 == 0 and review["overall"] in {1.0, 2.0, 3.0, 4.0, 5.0}
    assert json.loads((out / "synth_summary.json").read_text())["config"]["seed"] == 3


@pytest.mark.unit
def test_structure_for_preprocessing(small: tuple[Path, dict]) -> None:
    out, _ = small
    t = read_amazon2014(out, category="Beauty").interactions.to_pydict()
    seqs: dict[str, list[int]] = collections.defaultdict(list)
    for u, ts in sorted(set(zip(t["user_id"], t["timestamp"], strict=True))):
        seqs[u].append(ts)
    assert all(
        len(set(v)) == len(v) for v in seqs.values()
    )  # strictly increasing per user: order recoverable
    lengths = [len(v) for v in seqs.values()]
    assert min(lengths) == 3 and sum(n < 5 for n in lengths) >= 10  # 5-core has users to remove
    counts = sorted(collections.Counter(t["item_id"]).values(), reverse=True)
    top = sum(counts[: len(counts) // 10])
    assert top / sum(counts) > 0.25 and counts[-1] < 5  # power-law head, thin tail (items under 5-core)


@pytest.mark.unit
def test_vocabularies_are_partly_shared(small: tuple[Path, dict]) -> None:
    out, _ = small

    def words(cat: str) -> set[str]:
        titles = read_amazon2014(out, category=cat).items["title"].drop_null().to_pylist()
        return {w for t in titles for w in t.split()}

    beauty, health, toys = words("Beauty"), words("Health"), words("Toys")
    assert len(beauty & health) / len(beauty | health) > 0.3  # shared modifiers, lines, brands, nouns
    assert len(beauty & toys) / len(beauty | toys) > 0.2
    assert set(CATEGORY_VOCAB["Beauty"]) & set(CATEGORY_VOCAB["Health"]) == {"Personal Care"}


def leave_one_out_hr(interactions: dict[str, list], k: int = 10) -> tuple[float, float]:
    """HR@k on each user's last item: most-popular vs first-order Markov (fallback: popular)."""
    seqs: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
    for u, i, ts in zip(
        interactions["user_id"], interactions["item_id"], interactions["timestamp"], strict=True
    ):
        seqs[u].append((ts, i))
    trans: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    pop: collections.Counter = collections.Counter()
    tests = []
    for events in seqs.values():
        items = [i for _, i in sorted(set(events))]
        history, target = items[:-1], items[-1]
        pop.update(history)
        for a, b in zip(history, history[1:], strict=False):
            trans[a][b] += 1
        tests.append((history[-1], target))
    top = [i for i, _ in pop.most_common(k)]
    hr_pop = sum(t in top for _, t in tests) / len(tests)
    hits = 0
    for last, target in tests:
        cand = [i for i, _ in trans[last].most_common(k)]
        cand += [i for i in top if i not in cand][: k - len(cand)]
        hits += target in cand
    return hr_pop, hits / len(tests)


@pytest.mark.unit
def test_learnable_sequential_signal(tmp_path: Path) -> None:
    synth(tmp_path, seed=0, categories=("Beauty",), users_per_category=400, items_per_category=200, yelp_users=400,
          yelp_items=200)  # fmt: skip
    for ds in (read_amazon2014(tmp_path), read_yelp(tmp_path)):
        hr_pop, hr_markov = leave_one_out_hr(ds.interactions.to_pydict())
        assert hr_markov > 2 * hr_pop and hr_markov - hr_pop > 0.2, (ds.name, hr_pop, hr_markov)
    # Control: without successor steps the same Markov model has no edge over popularity.
    synth(tmp_path / "flat", seed=0, categories=("Beauty",), users_per_category=400, items_per_category=200,
          yelp=False, p_successor=0.0)  # fmt: skip
    hr_pop, hr_markov = leave_one_out_hr(read_amazon2014(tmp_path / "flat").interactions.to_pydict())
    assert hr_markov < hr_pop + 0.05, (hr_pop, hr_markov)


@pytest.mark.unit
def test_config_validation() -> None:
    with pytest.raises(ValueError, match=r"synth.categories: unknown \['Books'\]"):
        SynthConfig(categories=("Beauty", "Books"))
    with pytest.raises(ValueError, match=r"synth.p_successor=1.5"):
        SynthConfig(p_successor=1.5)
    with pytest.raises(ValueError, match=r"synth.users_per_category=3"):
        SynthConfig(users_per_category=3)
    with pytest.raises(ValueError, match=r"duplicates"):
        SynthConfig(categories=("Toys", "Toys"))
    assert SynthConfig().categories == ("Beauty", "Toys", "Sports", "Health", "Home", "Clothing")
