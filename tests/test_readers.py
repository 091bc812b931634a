"""Readers: hand-computed expectations on tiny fixture files, and one test per kind of bad input."""

from __future__ import annotations

import gzip
import json
import os
import random
import zlib
from pathlib import Path

import pytest
from fusionrec.data_pipeline.errors import DataError
from fusionrec.data_pipeline.readers import (
    FORMATS,
    read_amazon2014,
    read_dataset,
    read_movielens,
    read_p5,
    read_yelp,
)


def write_gz(path: Path, lines: list[str | bytes]) -> Path:
    data = b"".join((x if isinstance(x, bytes) else x.encode("utf-8")) + b"\n" for x in lines)
    path.write_bytes(gzip.compress(data, mtime=0))
    return path


def review(user: str, item: str, ts: int, overall: float | None = None, **extra) -> str:
    rec = {"reviewerID": user, "asin": item, "reviewerName": "N", "helpful": [0, 0], "unixReviewTime": ts}
    if overall is not None:
        rec["overall"] = overall
    rec.update(extra)
    return json.dumps(rec)


META_I1 = {
    "asin": "I1",
    "title": "Rose Serum",
    "brand": "Acme",
    "categories": [["Beauty", "Skin Care"], ["Beauty", "Face", "Skin Care"]],
    "price": 12.5,
    "salesRank": {"Beauty": 10},
    "description": "A serum.",
    "related": {"also_bought": ["I2"]},
    "imUrl": "http://example.com/I1.jpg",
}


@pytest.fixture
def amazon_dir(tmp_path: Path) -> Path:
    write_gz(
        tmp_path / "reviews_Beauty_5.json.gz",
        [review("U1", "I1", 300, 5.0, reviewText="nice"), review("U2", "I2", 100, 4.0), review("U1", "I2", 100, 3.0),
         "", review("U2", "I3", 200)],
    )  # fmt: skip
    write_gz(
        tmp_path / "meta_Beauty.json.gz",
        [repr(META_I1), repr({"asin": "I9", "title": "Unused"}),
         repr({"asin": "I2", "title": "Kid's Shampoo", "categories": [["Beauty"]]}),
         repr({"asin": "I2", "title": "dup"})],
    )  # fmt: skip
    return tmp_path


@pytest.mark.unit
def test_amazon_reviews_exact(amazon_dir: Path) -> None:
    ds = read_amazon2014(amazon_dir)
    assert ds.name == "beauty"
    inter = ds.interactions.to_pydict()
    assert inter == {
        "user_id": ["U1", "U2", "U1", "U2"],
        "item_id": ["I1", "I2", "I2", "I3"],
        "timestamp": [300, 100, 100, 200],
        "rating": [5.0, 4.0, 3.0, None],
    }
    items = ds.items.to_pylist()
    assert [r["item_id"] for r in items] == ["I1", "I2", "I3"]
    assert items[0] == {"item_id": "I1", "title": "Rose Serum", "brand": "Acme",
                        "categories": ["Beauty", "Skin Care", "Face"], "description": "A serum.",
                        "price": 12.5, "text": None}  # fmt: skip
    assert items[1]["title"] == "Kid's Shampoo" and items[1]["categories"] == [
        "Beauty"
    ]  # first meta line wins
    assert items[2] == {"item_id": "I3", "title": None, "brand": None, "categories": [], "description": None,
                        "price": None, "text": None}  # fmt: skip
    assert ds.skipped == {"blank_lines": 1, "duplicate_meta": 1, "items_without_meta": 1,
                          "meta_items_without_interactions": 1}  # fmt: skip
    assert ds.source_files == [
        str((amazon_dir / f).resolve()) for f in ("reviews_Beauty_5.json.gz", "meta_Beauty.json.gz")
    ]


@pytest.mark.unit
def test_amazon_ratings_csv_and_category_choice(amazon_dir: Path) -> None:
    (amazon_dir / "ratings_Toys_and_Games.csv").write_text("A,T1,5.0,10\nB,T1,2.0,30\nA,T2,4.0,20\n")
    write_gz(
        amazon_dir / "meta_Toys_and_Games.json.gz", [repr({"asin": "T2", "title": "Kite", "price": "3"})]
    )
    with pytest.raises(DataError, match=r"several categories \['Beauty', 'Toys_and_Games'\]"):
        read_amazon2014(amazon_dir)
    with pytest.raises(
        DataError, match=r"category 'Music' not found; available: \['Beauty', 'Toys_and_Games'\]"
    ):
        read_amazon2014(amazon_dir, category="Music")
    ds = read_amazon2014(amazon_dir, category="Toys_and_Games", name="toys")
    assert ds.name == "toys"
    assert ds.interactions.to_pydict() == {
        "user_id": ["A", "B", "A"], "item_id": ["T1", "T1", "T2"], "timestamp": [10, 30, 20], "rating": [5.0, 2.0, 4.0]
    }  # fmt: skip
    assert ds.items.column("item_id").to_pylist() == ["T1", "T2"]
    assert ds.items.column("price").to_pylist() == [None, 3.0]
    assert ds.skipped == {"items_without_meta": 1}


@pytest.mark.unit
def test_amazon_ratings_csv_bad_line(tmp_path: Path) -> None:
    (tmp_path / "ratings_Toys.csv").write_text("A,T1,5.0,10\nB,T1,2.0\nA,T2,4.0,20\n")
    write_gz(tmp_path / "meta_Toys.json.gz", [repr({"asin": "T1"})])
    with pytest.raises(DataError, match=r"ratings_Toys.csv:2: expected 4 comma-separated fields"):
        read_amazon2014(tmp_path)
    (tmp_path / "ratings_Toys.csv").write_text("A,T1,5.0,10\nB,T1,2.0,soon\n")
    with pytest.raises(DataError, match=r"ratings_Toys.csv:2: field 'timestamp' has bad value 'soon'"):
        read_amazon2014(tmp_path)


@pytest.mark.unit
def test_yelp_exact(tmp_path: Path) -> None:
    biz = [
        {"business_id": "b1", "name": "Luigi's", "city": "Las Vegas", "state": "NV", "stars": 4.5,
         "categories": "Pizza, Italian, Pizza", "attributes": None},
        {"business_id": "b2", "name": "Cut Above", "city": "Phoenix", "state": "AZ", "categories": None},
        {"business_id": "b3", "name": "Never Reviewed", "categories": "Bars"},
    ]  # fmt: skip
    reviews = [
        {"review_id": "r1", "user_id": "x", "business_id": "b2", "stars": 5, "date": "2018-07-07 22:09:11"},
        {"review_id": "r2", "user_id": "x", "business_id": "b1", "stars": 3.0, "date": "1970-01-02 00:00:01"},
    ]
    (tmp_path / "yelp_academic_dataset_business.json").write_text("\n".join(map(json.dumps, biz)) + "\n")
    (tmp_path / "yelp_academic_dataset_review.json").write_text("\n".join(map(json.dumps, reviews)) + "\n")
    ds = read_yelp(tmp_path)
    # 2018-01-01 is day 17532; Jul 7 is +187 days; 22:09:11 adds 79751 s.
    assert ds.interactions.to_pydict() == {
        "user_id": ["x", "x"], "item_id": ["b2", "b1"], "timestamp": [17719 * 86400 + 79751, 86401],
        "rating": [5.0, 3.0],
    }  # fmt: skip
    items = {r["item_id"]: r for r in ds.items.to_pylist()}
    assert items["b1"]["title"] == "Luigi's" and items["b1"]["categories"] == ["Pizza", "Italian"]
    assert items["b1"]["description"] == "Las Vegas, NV"
    assert items["b2"]["categories"] == []
    assert ds.skipped == {"meta_items_without_interactions": 1}


@pytest.mark.unit
def test_movielens_exact_latin1(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_bytes(b"1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n")
    movies = "10::Amélie (2001)::Comedy|Romance\n20::Toy Story (1995)::Animation|Children's|Comedy\n30::X (2000)::Drama\n"
    (tmp_path / "movies.dat").write_bytes(movies.encode("latin-1"))
    ds = read_movielens(tmp_path)
    assert ds.name == "ml-1m"
    assert ds.interactions.to_pydict() == {
        "user_id": ["1", "1", "2"], "item_id": ["10", "20", "10"],
        "timestamp": [978300760, 978302109, 978301968], "rating": [5.0, 3.0, 4.0],
    }  # fmt: skip
    items = ds.items.to_pylist()
    assert [(r["item_id"], r["title"], r["categories"]) for r in items] == [
        ("10", "Amélie (2001)", ["Comedy", "Romance"]),
        ("20", "Toy Story (1995)", ["Animation", "Children's", "Comedy"]),
    ]
    assert ds.skipped == {"meta_items_without_interactions": 1}
    (tmp_path / "ratings.dat").write_bytes(b"1::10::5::978300760\n1::20::3\n")
    with pytest.raises(DataError, match=r"ratings.dat:2: expected 4 '::'-separated fields"):
        read_movielens(tmp_path)


@pytest.fixture
def p5_dir(tmp_path: Path) -> Path:
    d = tmp_path / "amazon_tiny"
    d.mkdir()
    (d / "item_plain_text.txt").write_text(
        "A title: Red Lipstick; brand: Glam; categories: Makeup, Lips; price: 9.5\n"
        "B title: Soap; bar of soap\n"
        "C title: Unused\n"
    )
    (d / "user_sequence.txt").write_text("u1 A B A\nu2 B A\nu3\n")
    return d


@pytest.mark.unit
def test_p5_exact(p5_dir: Path) -> None:
    ds = read_p5(p5_dir)
    assert ds.name == "amazon_tiny"
    assert ds.interactions.to_pydict() == {
        "user_id": ["u1", "u1", "u1", "u2", "u2"], "item_id": ["A", "B", "A", "B", "A"],
        "timestamp": [0, 1, 2, 0, 1], "rating": [None] * 5,
    }  # fmt: skip
    items = ds.items.to_pylist()
    assert [r["item_id"] for r in items] == ["A", "B", "C"]  # every listed item kept, file order
    assert items[0] == {"item_id": "A", "title": "Red Lipstick", "brand": "Glam", "categories": ["Makeup", "Lips"],
                        "description": None, "price": 9.5,
                        "text": "title: Red Lipstick; brand: Glam; categories: Makeup, Lips; price: 9.5"}  # fmt: skip
    assert items[1]["title"] == "Soap; bar of soap"  # a '; ' without a key belongs to the value
    assert ds.skipped == {"users_without_items": 1}


@pytest.mark.unit
def test_read_dataset_dispatch(p5_dir: Path) -> None:
    assert read_dataset("p5", p5_dir, name="t").name == "t"
    assert read_dataset("p5", p5_dir, category=None).name == "amazon_tiny"
    with pytest.raises(ValueError, match=r"category='Beauty' only applies to format 'amazon2014', not 'p5'"):
        read_dataset("p5", p5_dir, category="Beauty")
    with pytest.raises(
        ValueError, match=r"unknown dataset format 'csv'; valid formats: amazon2014, yelp, movielens, p5"
    ):
        read_dataset("csv", p5_dir)
    assert FORMATS == ("amazon2014", "yelp", "movielens", "p5")


@pytest.mark.unit
@pytest.mark.parametrize("tail_newline", [True, False])
def test_fast_json_path_equals_line_by_line(tmp_path: Path, tail_newline: bool) -> None:
    """pyarrow's reader (fast path) and the line-by-line pass (the specification) give identical tables."""
    from collections import Counter

    from fusionrec.data_pipeline.readers.amazon2014 import _read_amazon_reviews
    from fusionrec.data_pipeline.readers.yelp import _read_yelp_reviews

    lines = [
        review("U1", "I1", 3, 5.0),
        "",
        review("U2", "I2", 1),
        "   ",
        review("U1", "I2", 2, 2.0, reviewText="é"),
    ]
    data = "\n".join(lines) + ("\n" if tail_newline else "")
    path = tmp_path / "reviews_X_5.json.gz"
    path.write_bytes(gzip.compress(data.encode(), mtime=0))
    (fast_skips, slow_skips) = Counter(), Counter()
    fast, slow = _read_amazon_reviews(path, fast_skips), _read_amazon_reviews(path, slow_skips, fast=False)
    assert fast.equals(slow) and fast.num_rows == 3
    assert fast_skips == slow_skips == Counter(blank_lines=2)
    ypath = tmp_path / "yelp_academic_dataset_review.json"
    ylines = ['{"user_id": "a", "business_id": "b", "stars": 4, "date": "2018-07-07 22:09:11"}', "",
              '{"user_id": "a", "business_id": "c", "date": "2018-07-08"}']  # fmt: skip
    ypath.write_text("\n".join(ylines) + "\n")
    (fast_skips, slow_skips) = Counter(), Counter()
    fast, slow = _read_yelp_reviews(ypath, fast_skips), _read_yelp_reviews(ypath, slow_skips, fast=False)
    assert fast.equals(slow) and fast["timestamp"].to_pylist() == [1531001351, 1531008000]
    assert fast_skips == slow_skips == Counter(blank_lines=1)
    # Numeric ids: pyarrow refuses them, the careful pass accepts them as strings.
    path.write_bytes(gzip.compress(b'{"reviewerID": 17, "asin": "I1", "unixReviewTime": 5}\n', mtime=0))
    assert _read_amazon_reviews(path, Counter())["user_id"].to_pylist() == ["17"]


@pytest.mark.unit
def test_non_utf8_in_an_unread_field_still_fails(amazon_dir: Path) -> None:
    bad = b'{"reviewerID": "U2", "asin": "I1", "unixReviewTime": 2, "reviewText": "caf\xe9"}'
    write_gz(amazon_dir / "reviews_Beauty_5.json.gz", [review("U1", "I1", 1), bad])
    with pytest.raises(DataError, match=r"reviews_Beauty_5.json.gz:2: invalid UTF-8 at byte 74"):
        read_amazon2014(amazon_dir)


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.unit
def test_malformed_json_line(amazon_dir: Path) -> None:
    write_gz(
        amazon_dir / "reviews_Beauty_5.json.gz", [review("U1", "I1", 1), '{"reviewerID": "U2", "asin": ']
    )
    with pytest.raises(DataError, match=r"reviews_Beauty_5.json.gz:2: malformed JSON") as ei:
        read_amazon2014(amazon_dir)
    assert ei.value.line == 2 and ei.value.path.endswith("reviews_Beauty_5.json.gz")
    write_gz(amazon_dir / "reviews_Beauty_5.json.gz", [review("U1", "I1", 1), "[1, 2]"])
    with pytest.raises(DataError, match=r":2: expected a JSON object, got list"):
        read_amazon2014(amazon_dir)


@pytest.mark.unit
def test_truncated_gzip_names_last_good_line(amazon_dir: Path) -> None:
    rng = random.Random(0)
    lines = [review(f"U{i}", f"I{i}", i, reviewText=f"{rng.getrandbits(128):032x}" * 8) for i in range(4000)]
    path = write_gz(amazon_dir / "reviews_Beauty_5.json.gz", lines)
    data = path.read_bytes()
    cut = data[: len(data) * 2 // 3]
    path.write_bytes(cut)
    with pytest.raises(DataError, match=r"truncated or corrupt gzip stream; last good line is \d+") as ei:
        read_amazon2014(amazon_dir)
    complete = zlib.decompressobj(31).decompress(cut).count(b"\n")  # lines fully present in the cut file
    assert ei.value.path == str(path) and 0 < ei.value.line <= complete < len(lines)
    assert str(ei.value).startswith(f"{path}:{ei.value.line}: ")


@pytest.mark.unit
def test_meta_line_not_a_dict_literal(amazon_dir: Path, tmp_path: Path) -> None:
    meta = amazon_dir / "meta_Beauty.json.gz"
    write_gz(meta, [repr(META_I1), "{'asin': 'I2', 'title': open('x')}"])
    with pytest.raises(DataError, match=r"meta_Beauty.json.gz:2: not a Python dict literal"):
        read_amazon2014(amazon_dir)
    write_gz(meta, ["['I1', 'I2']"])
    with pytest.raises(DataError, match=r"meta_Beauty.json.gz:1: expected a dict literal, got list"):
        read_amazon2014(amazon_dir)
    marker = tmp_path / "pwned"
    write_gz(meta, [f"__import__('os').system('touch {marker}')"])  # literal_eval must never execute code
    with pytest.raises(DataError, match=r":1: not a Python dict literal"):
        read_amazon2014(amazon_dir)
    assert not marker.exists()
    write_gz(meta, [repr({**META_I1, "categories": "Beauty"})])
    with pytest.raises(DataError, match=r":1: field 'categories' must be a list of lists, got 'Beauty'"):
        read_amazon2014(amazon_dir)


@pytest.mark.unit
def test_missing_required_field(amazon_dir: Path, tmp_path: Path) -> None:
    write_gz(
        amazon_dir / "reviews_Beauty_5.json.gz", [review("U1", "I1", 1), '{"reviewerID": "U2", "asin": "I2"}']
    )
    with pytest.raises(
        DataError, match=r"reviews_Beauty_5.json.gz:2: missing required field 'unixReviewTime'"
    ):
        read_amazon2014(amazon_dir)
    write_gz(amazon_dir / "reviews_Beauty_5.json.gz", [review("U1", "I1", "yesterday")])  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r":1: field 'unixReviewTime' must be an integer, got 'yesterday'"):
        read_amazon2014(amazon_dir)
    (tmp_path / "yelp_academic_dataset_review.json").write_text(
        '{"user_id": "x", "business_id": "b", "date": "07/07/2018"}\n'
    )
    (tmp_path / "yelp_academic_dataset_business.json").write_text('{"name": "no id"}\n')
    with pytest.raises(
        DataError, match=r"review.json:1: field 'date' must be 'YYYY-MM-DD HH:MM:SS', got '07/07/2018'"
    ):
        read_yelp(tmp_path)
    (tmp_path / "yelp_academic_dataset_review.json").write_text(
        '{"user_id": "x", "business_id": "b", "date": "2018-07-07"}\n'
    )
    with pytest.raises(DataError, match=r"business.json:1: missing required field 'business_id'"):
        read_yelp(tmp_path)


@pytest.mark.unit
def test_non_utf8_bytes(amazon_dir: Path, p5_dir: Path) -> None:
    write_gz(amazon_dir / "reviews_Beauty_5.json.gz",
             [review("U1", "I1", 1), b'{"reviewerID": "U\xff", "asin": "I1", "unixReviewTime": 2}'])  # fmt: skip
    with pytest.raises(DataError, match=r"reviews_Beauty_5.json.gz:2: invalid UTF-8 at byte 17"):
        read_amazon2014(amazon_dir)
    (p5_dir / "item_plain_text.txt").write_bytes(b"A title: ok\nB title: caf\xe9\n")
    with pytest.raises(DataError, match=r"item_plain_text.txt:2: invalid UTF-8"):
        read_p5(p5_dir)


@pytest.mark.unit
def test_empty_files(amazon_dir: Path, p5_dir: Path) -> None:
    (amazon_dir / "meta_Beauty.json.gz").write_bytes(gzip.compress(b"", mtime=0))
    with pytest.raises(DataError, match=r"meta_Beauty.json.gz: empty file"):
        read_amazon2014(amazon_dir)
    (p5_dir / "user_sequence.txt").write_bytes(b"")
    with pytest.raises(DataError, match=r"user_sequence.txt: empty file"):
        read_p5(p5_dir)
    (p5_dir / "user_sequence.txt").write_bytes(b"\n\n")
    with pytest.raises(DataError, match=r"user_sequence.txt: no interactions"):
        read_p5(p5_dir)


@pytest.mark.unit
def test_p5_unknown_item_and_duplicates(p5_dir: Path) -> None:
    (p5_dir / "user_sequence.txt").write_text("u1 A B\nu2 B Z A\n")
    with pytest.raises(DataError, match=r"user_sequence.txt:2: unknown item id 'Z'") as ei:
        read_p5(p5_dir)
    assert ei.value.line == 2
    (p5_dir / "user_sequence.txt").write_text("u1 A B\nu1 B A\n")
    with pytest.raises(DataError, match=r"user_sequence.txt:2: duplicate user id 'u1' \(first at line 1\)"):
        read_p5(p5_dir)
    (p5_dir / "item_plain_text.txt").write_text("A title: x\nB title: y\nA title: z\n")
    with pytest.raises(DataError, match=r"item_plain_text.txt:3: duplicate item id 'A' \(first at line 1\)"):
        read_p5(p5_dir)


@pytest.mark.unit
def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no reviews_<Category>_5.json.gz or ratings_<Category>.csv"):
        read_amazon2014(tmp_path)
    write_gz(tmp_path / "reviews_Pet_5.json.gz", [review("U1", "I1", 1)])
    with pytest.raises(DataError, match=r"meta_Pet.json.gz: metadata file not found"):
        read_amazon2014(tmp_path)
    with pytest.raises(
        DataError, match=r"user_sequence.txt: file not found|item_plain_text.txt: file not found"
    ):
        read_p5(tmp_path)


# ---------------------------------------------------------------------------------------------- real data
@pytest.mark.slow
def test_p5_beauty_real_counts(shared_data: Path) -> None:
    ds = read_p5(shared_data / "amazon_beauty")
    assert ds.interactions.num_rows == 198_502
    assert len(ds.interactions.column("user_id").unique()) == 22_363
    assert ds.items.num_rows == 12_101 == len(ds.interactions.column("item_id").unique())
    assert ds.skipped == {}
    first = (shared_data / "amazon_beauty" / "user_sequence.txt").open().readline().split()
    head = ds.interactions.slice(0, len(first) - 1).to_pydict()
    assert head["user_id"] == [first[0]] * (len(first) - 1) and head["item_id"] == first[1:]
    assert head["timestamp"] == list(range(len(first) - 1))
    assert os.path.basename(ds.source_files[0]) == "user_sequence.txt"
