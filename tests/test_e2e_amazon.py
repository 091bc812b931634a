"""End to end through the CLI on hand-written raw Amazon-2014 files: `fusionrec prepare --config` →
`fusionrec inspect --json`, checked against statistics and leave-one-out samples derived BY HAND below.

The fixture (k = 5) is small enough to follow on paper:

beauty — core: users UB1..UB6 each review all six items B0001..B0006 (36 interactions); user UBk reviews
them in the order core[(k-1+j) % 6], j = 0..5, so every user has its own time order. Around the core:
  * X (B00X0) has 4 reviewers (ULATE, UB1, UB2, UB3)          -> removed in k-core round 1
  * USHORT reviews B0004, B0005 (2 items)                      -> removed in round 1
  * ULATE reviews X, Y, B0001, B0002, B0003 (exactly 5)        -> 4 left after round 1: removed in round 2
  * Y (B00Y0) has 5 reviewers (ULATE, UB1..UB4)                -> 4 left after round 2: removed in round 3
  * UB2 reviews B0005 a second time, after everything else     -> dedupe keeps the first (duplicate_repeat)
  * B0006 has no metadata line                                 -> text "item: B0006" (missing_text = "id")
  * one meta line for a product nobody reviewed                -> counted, not an item
  => 6 users, 6 items, 36 interactions, 3 k-core rounds; samples train 6*(6-3) = 18, valid 6, test 6.
toys — core: UT1..UT5 x T0001..T0005 (25); UTSHORT reviews 3 items and T0009 has one review (UT1):
  both removed in round 1 => 5 users, 5 items, 25 interactions; samples train 5*2 = 10, valid 5, test 5.
Review lines are written sorted by (asin, reviewer), not by time, so the per-user time sort is exercised.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fusionrec.launch import commands  # noqa: F401  (heavy imports at collection, not inside a test)
from fusionrec.launch.cli import main
from fusionrec.launch.config import load_config

pytestmark = pytest.mark.integration

BASE, DAY = 1_300_000_000, 86_400
BEAUTY_CORE = [f"B000{j}" for j in range(1, 7)]
TOYS_CORE = [f"T000{j}" for j in range(1, 6)]
X, Y = "B00X0", "B00Y0"

# Metadata exactly as the real files hold it: one `str(dict)` per line (Python literal, not JSON).
BEAUTY_META = {
    "B0001": {
        "title": "Rose Face Cream",
        "brand": "Acme",
        "categories": [["Beauty", "Skin Care", "Face", "Creams & Moisturizers"]],
        "price": 12.5,
        "salesRank": {"Beauty": 1234},
        "imUrl": "http://ecx.images-amazon.com/images/I/1.jpg",
    },
    "B0002": {
        "title": "Men's Shave Gel",  # an apostrophe: str(dict) switches to double quotes
        "brand": "Barber & Co",
        "categories": [["Beauty", "Shaving"], ["Beauty", "Men"]],
        "description": "Cooling gel.",
        "related": {"also_bought": ["B0003"]},
    },
    "B0003": {"title": "Lavender Soap", "brand": "Acme", "categories": [["Beauty", "Bath & Body"]]},
    "B0004": {"title": "Nail Polish Red", "brand": "Gloss", "categories": [["Beauty", "Nails"]]},
    "B0005": {"title": "Hair Oil", "brand": "Gloss", "categories": [["Beauty", "Hair Care"]]},
    X: {"title": "Cheap Mirror", "brand": "Nobody", "categories": [["Beauty"]]},
    Y: {"title": "Loofah", "brand": "Nobody", "categories": [["Beauty"]]},
    "B0UNREVIEWED": {"title": "Never Bought", "categories": [["Beauty"]]},
}
TOYS_META = {
    "T0001": {"title": "Wooden Blocks", "brand": "", "categories": [["Toys & Games", "Blocks"]]},
    "T0002": {"title": "Puzzle 500", "brand": "Ravens", "categories": [["Toys & Games", "Puzzles"]]},
    "T0003": {"title": "Kite", "brand": "Sky", "categories": [["Toys & Games", "Outdoor"]]},
    "T0004": {"title": "Yo-Yo", "brand": "Sky", "categories": [["Toys & Games"]]},
    "T0005": {"title": "Chess Set", "brand": "Ravens", "categories": [["Toys & Games", "Games"]]},
    "T0009": {"title": "Rare Robot", "brand": "Bots", "categories": [["Toys & Games"]]},
}

EXPECTED = {
    "beauty": {
        "users": 6,
        "items": 6,
        "interactions": 36,
        "samples": {"train": 18, "valid": 6, "test": 6},
    },
    "toys": {"users": 5, "items": 5, "interactions": 25, "samples": {"train": 10, "valid": 5, "test": 5}},
}


def beauty_reviews() -> list[tuple[str, str, int]]:
    """(reviewer, asin, unix time) rows of the beauty fixture, derived as in the module docstring."""
    rows = []
    for k in range(1, 7):
        rows += [(f"UB{k}", BEAUTY_CORE[(k - 1 + j) % 6], BASE + DAY * (100 * k + 10 * j)) for j in range(6)]
        if k <= 3:
            rows.append((f"UB{k}", X, BASE + DAY * (100 * k + 25)))
        if k <= 4:
            rows.append((f"UB{k}", Y, BASE + DAY * (100 * k + 45)))
    rows += [("ULATE", a, BASE + DAY * (700 + 10 * j)) for j, a in enumerate([X, Y, *BEAUTY_CORE[:3]])]
    rows += [("USHORT", "B0004", BASE + DAY * 800), ("USHORT", "B0005", BASE + DAY * 810)]
    rows.append(("UB2", "B0005", BASE + DAY * 290))  # the repeat review, later than all of UB2's others
    return rows


def toys_reviews(swap: dict[str, str] | None = None) -> list[tuple[str, str, int]]:
    swap = swap or {}
    rows = []
    for k in range(1, 6):  # reverse rotation: UTk reviews core[(k-1-j) % 5]
        rows += [(f"UT{k}", TOYS_CORE[(k - 1 - j) % 5], BASE + DAY * (100 * k + 10 * j)) for j in range(5)]
    rows += [("UTSHORT", t, BASE + DAY * (900 + j)) for j, t in enumerate(TOYS_CORE[:3])]
    rows.append(("UT1", "T0009", BASE + DAY * 999))
    return [(u, swap.get(a, a), t) for u, a, t in rows]


def _gz_lines(path: Path, lines: list[str]) -> None:
    path.write_bytes(gzip.compress("".join(line + "\n" for line in lines).encode(), mtime=0))


def write_category(folder: Path, category: str, rows: list[tuple[str, str, int]], meta: dict) -> None:
    """reviews_<Cat>_5.json.gz (JSON lines, the real field set) + meta_<Cat>.json.gz (dict literals)."""
    folder.mkdir(parents=True, exist_ok=True)
    reviews = [
        json.dumps(
            {
                "reviewerID": user,
                "asin": asin,
                "reviewerName": f"name of {user}",
                "helpful": [0, 0],
                "reviewText": f"{user} on {asin}",
                "overall": 5.0,
                "summary": "ok",
                "unixReviewTime": ts,
                "reviewTime": "01 1, 2014",
            }
        )
        for user, asin, ts in sorted(rows, key=lambda r: (r[1], r[0], r[2]))
    ]
    _gz_lines(folder / f"reviews_{category}_5.json.gz", reviews)
    _gz_lines(folder / f"meta_{category}.json.gz", [str({"asin": a, **m}) for a, m in meta.items()])


def write_config(
    path: Path, raw: Path, extra: str = "", datasets: tuple[str, ...] = ("beauty", "toys")
) -> Path:
    specs = "".join(
        f'[[data.datasets]]\nname = "{n}"\nformat = "amazon2014"\ninput = "{raw}"\ncategory = "{n.title()}"\n\n'
        for n in datasets
    )
    path.write_text(
        '[data]\nkcore = 5\nmissing_text = "id"\n\n'
        '[data.shards]\nengine = "local"\nsamples_per_shard = 16\n\n' + extra + specs
    )
    return path


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    folder = tmp_path / "raw"
    write_category(folder, "Beauty", beauty_reviews(), BEAUTY_META)
    write_category(folder, "Toys", toys_reviews(), TOYS_META)
    return folder


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def inspect_json(capsys, corpus: Path) -> dict:
    code, out, err = run_cli(capsys, "inspect", corpus, "--json")
    assert code == 0, err
    return json.loads(out)


def shard_samples(corpus: Path) -> list[dict]:
    samples = []
    for shard in sorted(corpus.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            samples += [json.loads(tar.extractfile(m).read()) for m in tar]
    return samples


def hidden_leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_prepare_config_gives_the_hand_computed_corpus(tmp_path, raw, capsys):
    cfg_path = write_config(tmp_path / "both.toml", raw)
    out = tmp_path / "corpus"
    code, _, err = run_cli(capsys, "prepare", "--config", cfg_path, "--out", out)
    assert code == 0, err

    assert inspect_json(capsys, out) == {"samples": 50, "shards": 4, "datasets": EXPECTED}
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["samples"] for s in manifest["shards"]] == [16, 16, 16, 2]
    assert manifest["splits"] == {"train": 28, "valid": 11, "test": 11}
    assert manifest["datasets"]["beauty"]["kcore_rounds"] == 3  # X | USHORT, then ULATE, then Y
    assert manifest["datasets"]["toys"]["kcore_rounds"] == 1
    assert manifest["datasets"]["beauty"]["density"] == pytest.approx(1.0)
    skipped = manifest["skipped"]
    # Beauty removed rows: X's 4, ULATE's other 4, Y's other 4, USHORT's 2 = 14 (after the 1 duplicate).
    assert skipped["beauty/duplicate_repeat"] == 1
    assert skipped["beauty/kcore_interactions"] == 14
    assert skipped["beauty/reader:items_without_meta"] == 1  # B0006
    assert skipped["beauty/reader:meta_items_without_interactions"] == 1  # B0UNREVIEWED
    assert skipped["beauty/item_text_from_id"] == 1
    assert skipped["toys/kcore_interactions"] == 3 + 1
    files = [raw / f"{kind}_{c}" for c in ("Beauty", "Toys") for kind in ("reviews", "meta")]
    files = [f.with_name(f.name + ("_5.json.gz" if "reviews" in f.name else ".json.gz")) for f in files]
    assert manifest["sources"] == {
        str(f.resolve()): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(files)
    }

    # The resolved config beside the corpus loads back to the config the run used.
    assert load_config(out / "config.toml") == load_config(cfg_path)


def test_samples_of_one_user_are_the_hand_derived_leave_one_out(tmp_path, raw, capsys):
    out = tmp_path / "corpus"
    assert (
        run_cli(capsys, "prepare", "--config", write_config(tmp_path / "c.toml", raw), "--out", out)[0] == 0
    )
    samples = shard_samples(out)
    assert len(samples) == 50
    # UB2 in time order: B0002 B0003 B0004 B0005 B0006 B0001 (its repeat of B0005 at the end is dropped).
    seq = [f"beauty:{i}" for i in ("B0002", "B0003", "B0004", "B0005", "B0006", "B0001")]
    mine = sorted(
        (s for s in samples if s["user"] == "beauty:UB2"),
        key=lambda s: (["train", "valid", "test"].index(s["split"]), len(s["history"])),
    )
    assert mine == [
        {"dataset": "beauty", "user": "beauty:UB2", "split": "train", "history": seq[:1], "target": seq[1]},
        {"dataset": "beauty", "user": "beauty:UB2", "split": "train", "history": seq[:2], "target": seq[2]},
        {"dataset": "beauty", "user": "beauty:UB2", "split": "train", "history": seq[:3], "target": seq[3]},
        {"dataset": "beauty", "user": "beauty:UB2", "split": "valid", "history": seq[:4], "target": seq[4]},
        {"dataset": "beauty", "user": "beauty:UB2", "split": "test", "history": seq[:5], "target": seq[5]},
    ]
    # UT3 (toys, reverse rotation): T0003 T0002 T0001 T0005 T0004 -> test target T0004.
    test_ut3 = [s for s in samples if s["user"] == "toys:UT3" and s["split"] == "test"]
    assert test_ut3 == [
        {
            "dataset": "toys",
            "user": "toys:UT3",
            "split": "test",
            "history": ["toys:T0003", "toys:T0002", "toys:T0001", "toys:T0005"],
            "target": "toys:T0004",
        }
    ]
    # Nothing removed by the k-core survives anywhere, and every user's test target is its last item.
    flat = {i for s in samples for i in [*s["history"], s["target"]]}
    assert flat == {f"beauty:{i}" for i in BEAUTY_CORE} | {f"toys:{i}" for i in TOYS_CORE}
    assert {s["user"] for s in samples} == {f"beauty:UB{k}" for k in range(1, 7)} | {
        f"toys:UT{k}" for k in range(1, 6)
    }
    seqs = pq.read_table(out / "processed" / "beauty" / "sequences.parquet").to_pylist()
    last = {r["user_id"]: r["item_ids"][-1] for r in seqs}
    assert {
        s["user"]: s["target"] for s in samples if s["split"] == "test" and s["dataset"] == "beauty"
    } == last


def test_item_text_is_rendered_from_the_dict_literal_metadata(tmp_path, raw, capsys):
    out = tmp_path / "corpus"
    assert (
        run_cli(capsys, "prepare", "--config", write_config(tmp_path / "c.toml", raw), "--out", out)[0] == 0
    )
    rows = pq.read_table(out / "items.parquet").to_pylist()
    text = {r["item_id"]: r["text"] for r in rows}
    assert {r["dataset"] for r in rows} == {"beauty", "toys"} and len(rows) == 11
    assert text == {
        "beauty:B0001": "title: Rose Face Cream; brand: Acme; "
        "categories: Beauty, Skin Care, Face, Creams & Moisturizers; price: 12.5",
        "beauty:B0002": "title: Men's Shave Gel; brand: Barber & Co; categories: Beauty, Shaving, Men; "
        "description: Cooling gel.",
        "beauty:B0003": "title: Lavender Soap; brand: Acme; categories: Beauty, Bath & Body",
        "beauty:B0004": "title: Nail Polish Red; brand: Gloss; categories: Beauty, Nails",
        "beauty:B0005": "title: Hair Oil; brand: Gloss; categories: Beauty, Hair Care",
        "beauty:B0006": "item: B0006",  # no meta line: the documented fallback, counted in the manifest
        "toys:T0001": "title: Wooden Blocks; categories: Toys & Games, Blocks",  # empty brand dropped
        "toys:T0002": "title: Puzzle 500; brand: Ravens; categories: Toys & Games, Puzzles",
        "toys:T0003": "title: Kite; brand: Sky; categories: Toys & Games, Outdoor",
        "toys:T0004": "title: Yo-Yo; brand: Sky; categories: Toys & Games",
        "toys:T0005": "title: Chess Set; brand: Ravens; categories: Toys & Games, Games",
    }
    per_dataset = pq.read_table(out / "processed" / "toys" / "items.parquet").to_pylist()
    assert [r["item_id"] for r in per_dataset] == [f"toys:{t}" for t in TOYS_CORE]
    assert per_dataset[1]["brand"] == "Ravens" and per_dataset[1]["categories"] == ["Toys & Games", "Puzzles"]


def test_item_without_text_fails_by_default_naming_dataset_and_item(tmp_path, raw, capsys):
    cfg_path = write_config(tmp_path / "c.toml", raw)
    cfg_path.write_text(cfg_path.read_text().replace('missing_text = "id"', 'missing_text = "error"'))
    code, _, err = run_cli(capsys, "prepare", "--config", cfg_path, "--out", tmp_path / "corpus")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "reviews_Beauty_5.json.gz" in err and "'beauty'" in err and "B0006" in err
    assert not (tmp_path / "corpus").exists() and hidden_leftovers(tmp_path) == []


def test_fusion_config_writes_a_zero_shot_corpus_with_its_own_manifest(tmp_path, raw, capsys):
    fusion = '[data.fusion]\npretrain = ["beauty"]\nzeroshot = ["toys"]\n\n'
    cfg_path = write_config(tmp_path / "fusion.toml", raw, extra=fusion)
    out = tmp_path / "fusion"
    # user_cap = 4 < 6 beauty users: every beauty user has all 6 items, so the cap's outcome is known
    # whichever 4 users the seeded sample picks; the zero-shot dataset (5 users) is never downsampled.
    code, _, err = run_cli(capsys, "prepare", "--config", cfg_path, "--out", out, "data.fusion.user_cap=4")
    assert code == 0, err
    toys_alone = {"samples": 20, "shards": 2, "datasets": {"toys": EXPECTED["toys"]}}
    capped = {"users": 4, "items": 6, "interactions": 24, "samples": {"train": 12, "valid": 4, "test": 4}}
    assert inspect_json(capsys, out) == {
        "samples": 20,
        "shards": 2,
        "datasets": {"beauty": capped},
        "zeroshot": {"toys": toys_alone},
    }
    zs = out / "zeroshot" / "toys"
    assert inspect_json(capsys, zs) == toys_alone
    zs_manifest = json.loads((zs / "manifest.json").read_text())
    assert sorted(zs_manifest["sources"]) == sorted(
        str((raw / f).resolve()) for f in ("reviews_Toys_5.json.gz", "meta_Toys.json.gz")
    )
    assert json.loads((out / "manifest.json").read_text())["skipped"]["beauty/user_cap_users"] == 2
    assert {r["dataset"] for r in pq.read_table(out / "items.parquet").to_pylist()} == {"beauty"}
    assert pq.read_table(zs / "items.parquet").num_rows == 5
    assert {s["dataset"] for s in shard_samples(out)} == {"beauty"}
    assert {s["dataset"] for s in shard_samples(zs)} == {"toys"}


def test_leakage_across_categories_fails_with_one_line_naming_the_dataset(tmp_path, capsys):
    raw = tmp_path / "raw"
    write_category(raw, "Beauty", beauty_reviews(), BEAUTY_META)
    # The same ASIN listed in two categories (it happens in the real dumps): toys' T0005 is beauty's B0004.
    leak_meta = {("B0004" if a == "T0005" else a): m for a, m in TOYS_META.items()}
    write_category(raw, "Toys", toys_reviews({"T0005": "B0004"}), leak_meta)
    fusion = '[data.fusion]\npretrain = ["beauty"]\nzeroshot = ["toys"]\n\n'
    cfg_path = write_config(tmp_path / "leak.toml", raw, extra=fusion)
    out = tmp_path / "leak"
    code, out_text, err = run_cli(capsys, "prepare", "--config", cfg_path, "--out", out)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fusionrec prepare: error: ")
    assert "'toys'" in lines[0] and "beauty" in lines[0] and "B0004" in lines[0]
    assert not out.exists() and hidden_leftovers(tmp_path) == []
    # The documented alternative removes the shared item from the pretraining side, counted.
    code, _, err = run_cli(
        capsys, "prepare", "--config", cfg_path, "--out", out, "data.fusion.on_leakage=drop"
    )
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"]["beauty/leakage_interactions"] == 6  # every beauty user had B0004
    assert manifest["datasets"]["beauty"]["items"] == 5
    assert "beauty:B0004" not in {i for s in shard_samples(out) for i in [*s["history"], s["target"]]}
