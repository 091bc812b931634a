"""Preprocessing: dedupe, k-core fixed point, stable time sort, item text, skips, leave-one-out splits."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest
from fusionrec.data_pipeline.config import DataConfig
from fusionrec.data_pipeline.errors import DataError
from fusionrec.data_pipeline.preprocess import (
    build_sequences,
    dedupe,
    kcore,
    leave_one_out,
    preprocess,
    render_item_text,
    sample_positions,
    split_counts,
)
from fusionrec.data_pipeline.records import INTERACTION_SCHEMA, ITEM_SCHEMA, RawDataset


def interactions(rows: list[tuple[str, str, int]]) -> pa.Table:
    users, items, ts = zip(*rows, strict=True) if rows else ((), (), ())
    return pa.Table.from_pydict(
        {"user_id": list(users), "item_id": list(items), "timestamp": list(ts), "rating": [None] * len(rows)},
        schema=INTERACTION_SCHEMA,
    )


def item_table(meta: dict[str, dict]) -> pa.Table:
    cols = {f.name: [] for f in ITEM_SCHEMA}
    for item_id, fields in meta.items():
        cols["item_id"].append(item_id)
        for f in ITEM_SCHEMA.names[1:]:
            cols[f].append(fields.get(f))
    return pa.Table.from_pydict(cols, schema=ITEM_SCHEMA)


def raw_dataset(rows, meta=None, name="toy") -> RawDataset:
    if meta is None:
        meta = {i: {"title": f"Title {i}"} for _, i, _ in rows}
    return RawDataset(name, interactions(rows), item_table(meta), ["/src/toy.json"], {"bad_json": 2})


def naive_kcore(rows: list[tuple[str, str, int]], k: int) -> list[tuple[str, str, int]]:
    """Reference: remove one violating interaction set at a time until nothing changes."""
    rows = list(rows)
    changed = True
    while changed:
        changed = False
        ucount, icount = {}, {}
        for u, i, _ in rows:
            ucount[u] = ucount.get(u, 0) + 1
            icount[i] = icount.get(i, 0) + 1
        for u in sorted(ucount):
            if ucount[u] < k:
                rows = [r for r in rows if r[0] != u]
                changed = True
                break
        else:
            for i in sorted(icount):
                if icount[i] < k:
                    rows = [r for r in rows if r[1] != i]
                    changed = True
                    break
    return rows


@pytest.mark.unit
def test_dedupe_keeps_first_in_time_and_counts_exact_and_repeat():
    rows = [("a", "x", 5), ("a", "y", 1), ("a", "x", 3), ("a", "x", 3), ("b", "x", 5), ("a", "y", 1)]
    table, counts = dedupe(interactions(rows))
    # (a,x): ts 5, 3, 3 -> keep the first ts=3 (row 2); row 3 is an exact duplicate, row 0 a repeat.
    # (a,y): rows 1 and 5 identical -> exact duplicate.
    assert counts == {"duplicate_exact": 2, "duplicate_repeat": 1}
    assert list(
        zip(
            table["user_id"].to_pylist(),
            table["item_id"].to_pylist(),
            table["timestamp"].to_pylist(),
            strict=True,
        )
    ) == [
        ("a", "y", 1),
        ("a", "x", 3),
        ("b", "x", 5),
    ]


@pytest.mark.unit
def test_kcore_needs_four_rounds_to_reach_the_hand_computed_fixed_point():
    # k=2. Round 1 drops user D (1 item); then item 4 has 1 user -> C-4 goes; then C has 1 item -> C-3 goes;
    # then item 3 has only A -> A-3 goes. Fixed point: A and B with items 1, 2.
    rows = [("A", "1", 0), ("A", "2", 1), ("A", "3", 2), ("B", "1", 0), ("B", "2", 1)]
    rows += [("C", "3", 0), ("C", "4", 1), ("D", "4", 0)]
    table, rounds = kcore(interactions(rows), 2)
    assert rounds == 4
    assert sorted(zip(table["user_id"].to_pylist(), table["item_id"].to_pylist(), strict=True)) == [
        ("A", "1"),
        ("A", "2"),
        ("B", "1"),
        ("B", "2"),
    ]
    again, rounds_again = kcore(table, 2)  # a fixed point stays fixed
    assert again.num_rows == table.num_rows and rounds_again == 0


@pytest.mark.unit
def test_kcore_equals_one_at_a_time_reference_on_random_data():
    rng = random.Random(7)
    rows = sorted({(f"u{rng.randrange(60)}", f"i{int(30 * rng.random() ** 2)}", 0) for _ in range(700)})
    table, _ = kcore(interactions(rows), 5)
    got = sorted(zip(table["user_id"].to_pylist(), table["item_id"].to_pylist(), strict=True))
    want = sorted((u, i) for u, i, _ in naive_kcore(rows, 5))
    assert got == want and len(got) > 100


@pytest.mark.unit
def test_sequences_are_stably_time_sorted_in_order_of_first_appearance():
    rows = [("b", "p", 9), ("a", "x", 7), ("b", "q", 3), ("a", "y", 7), ("a", "z", 1), ("b", "r", 9)]
    seq = build_sequences(interactions(rows))
    assert seq["user_id"].to_pylist() == ["b", "a"]
    assert seq["item_ids"].to_pylist() == [["q", "p", "r"], ["z", "x", "y"]]  # ties keep input order
    assert seq["timestamps"].to_pylist() == [[3, 9, 9], [1, 7, 7]]


@pytest.mark.unit
def test_item_text_renders_fields_drops_empty_ones_and_caps_length():
    meta = {
        "i1": {"title": "Lip Gloss", "brand": "Acme", "categories": ["Beauty", "Makeup"], "price": 31.689},
        "i2": {"title": "  ", "brand": None, "categories": [], "description": "Soft.", "price": 5.0},
        "i3": {"title": "ignored", "text": "title: pre rendered"},
        "i4": {"title": "x" * 50},
        "i5": {},
    }
    text = render_item_text(item_table(meta), max_chars=20).to_pylist()
    assert text[0] == "title: Lip Gloss; br"  # capped at 20 characters
    full = render_item_text(item_table(meta), max_chars=1000).to_pylist()
    assert full[0] == "title: Lip Gloss; brand: Acme; categories: Beauty, Makeup; price: 31.69"
    assert full[1] == "description: Soft.; price: 5"
    assert full[2] == "title: pre rendered"
    assert len(text[3]) == 20
    assert full[4] is None


@pytest.mark.unit
def test_preprocess_statistics_and_skips_are_hand_computed():
    # 6 users x 5 items each over items i0..i6; user u6 has 4 items and is removed by the 5-core,
    # which leaves item i6 (only u6 had it) with 0 interactions.
    rows = []
    for u in range(6):
        rows += [(f"u{u}", f"i{(u + j) % 6}", j) for j in range(5)]
    rows += [("u6", "i6", 0), ("u6", "i0", 1), ("u6", "i1", 2), ("u6", "i2", 3)]
    rows += [("u0", "i0", 9)]  # a repeat of (u0, i0) at a later time
    ds = preprocess(raw_dataset(rows), DataConfig(kcore=5))
    stats = ds.stats()
    assert (stats.users, stats.items, stats.interactions) == (6, 6, 30)
    assert stats.density == pytest.approx(30 / 36)
    assert ds.skipped == {"reader:bad_json": 2, "duplicate_repeat": 1, "kcore_interactions": 4}
    assert ds.items["item_id"].to_pylist() == [f"i{j}" for j in range(6)]
    assert ds.items["text"].to_pylist()[0] == "title: Title i0"
    assert ds.split_counts() == {"train": 6 * 2, "valid": 6, "test": 6}


@pytest.mark.unit
def test_short_users_are_skipped_and_counted_or_raise():
    rows = [("a", "x", 0), ("a", "y", 1), ("a", "z", 2), ("b", "x", 0), ("b", "y", 1)]
    ds = preprocess(raw_dataset(rows), DataConfig(kcore=1))
    assert ds.sequences["user_id"].to_pylist() == ["a"] and ds.skipped["short_user"] == 1
    with pytest.raises(
        DataError, match=r"/src/toy.json: dataset 'toy': 1 user\(s\) have < 3 items.*b \(2 items\)"
    ):
        preprocess(raw_dataset(rows), DataConfig(kcore=1, short_users="error"))


@pytest.mark.unit
def test_items_without_text_raise_by_default_or_use_their_id():
    rows = [("a", "x", 0), ("a", "y", 1), ("a", "z", 2)]
    meta = {"x": {"title": "X"}, "y": {"brand": " "}}  # y has only blank fields, z has no metadata at all
    with pytest.raises(DataError, match=r"2 referenced item\(s\) have no text.*\['y', 'z'\]"):
        preprocess(raw_dataset(rows, meta), DataConfig(kcore=1))
    ds = preprocess(raw_dataset(rows, meta), DataConfig(kcore=1, missing_text="id"))
    assert ds.items["text"].to_pylist() == ["title: X", "item: y", "item: z"]
    assert ds.skipped["item_text_from_id"] == 2


@pytest.mark.unit
def test_leave_one_out_matches_design_and_caps_history():
    items = ["a", "b", "c", "d", "e"]
    assert leave_one_out(items, 50) == [
        ("train", ["a"], "b"),
        ("train", ["a", "b"], "c"),
        ("valid", ["a", "b", "c"], "d"),
        ("test", ["a", "b", "c", "d"], "e"),
    ]
    assert leave_one_out(items, 2)[-1] == ("test", ["c", "d"], "e")
    user, pos, split = sample_positions(np.array([5, 3]))
    assert user.tolist() == [0, 0, 0, 0, 1, 1]
    assert pos.tolist() == [1, 2, 3, 4, 1, 2]
    assert split.tolist() == [0, 0, 1, 2, 1, 2]
    assert split_counts(np.array([5, 3])) == {"train": 2, "valid": 2, "test": 2}


@pytest.mark.slow
def test_amazon_beauty_statistics(shared_data):
    readers = pytest.importorskip("fusionrec.data_pipeline.readers")
    raw = readers.read_dataset("p5", shared_data / "amazon_beauty", name="beauty")
    ds = preprocess(raw, DataConfig())
    stats = ds.stats()
    assert (stats.users, stats.items, stats.interactions) == (22363, 12101, 198502)
    lengths = ds.lengths()
    assert ds.split_counts()["train"] == int((lengths - 3).sum()) == 198502 - 3 * 22363
    # Every test target is the user's last item in the raw file (the P5 file is already time ordered).
    last = {}
    with open(shared_data / "amazon_beauty" / "user_sequence.txt") as f:
        for line in f:
            user, *items = line.split()
            last[user] = items[-1]
    seqs = ds.sequences.to_pydict()
    for user, items in zip(seqs["user_id"], seqs["item_ids"], strict=True):
        assert leave_one_out(items, 50)[-1][2] == last[user]
