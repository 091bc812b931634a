"""The demo's synthetic world makes recommendation a real task (issue 18), checked on the generated data.

The world is the one `fusionrec demo` writes (launch/configs/demo.toml [synth], full size), read through the
real readers and 5-core preprocessing. On every platform, pretraining and held-out alike:
- >= 1,000 items, so a random ranking hits <= 1% at 10;
- most-popular hits <= 5% of the test targets at 10 (real Amazon Beauty: 1.1%);
- a first-order Markov model (item -> next-item counts on the training parts) beats most-popular by >= 2x:
  the sequential structure is learnable (SASRec's own figure is a row of the demo);
- a rule that reads only item text - rank the items whose title shares the last history item's leading
  words - hits >= 5x random on the held-out platforms: zero-shot has something to find in the text.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fusionrec.data_pipeline.config import ShardConfig
from fusionrec.data_pipeline.prepare import prepare
from fusionrec.data_pipeline.world_stats import dataset_stats, gini, most_popular_hr, tail_share
from fusionrec.launch.demo import demo_config, synthesize

K = 10


@pytest.mark.unit
def test_statistics_by_hand() -> None:
    assert gini(np.array([5, 5, 5, 5])) == 0.0
    # sorted (0, 0, 0, 4): sum (2i - n - 1) x_i = 3 * 4 = 12; / (n * sum) = 12 / 16
    assert gini(np.array([0, 4, 0, 0])) == pytest.approx(0.75)
    # 10 items: the 8 least popular hold 1+1+1+1+1+1+1+1 of 8 + 6 + 8 = 22
    assert tail_share(np.array([6, 8] + [1] * 8)) == pytest.approx(8 / 22)
    seqs = [["a", "b", "c", "x"], ["a", "b", "y"], ["b", "c", "d", "a"]]
    # training parts: [a, b], [a], [b, c] -> counts a 2, b 2, c 1 -> top-2 (ties by id) = {a, b}
    assert most_popular_hr(seqs, 2) == pytest.approx(1 / 3)  # only the third user's target "a"
    assert most_popular_hr(seqs, 3) == pytest.approx(1 / 3)  # top-3 = {a, b, c}: x, y, a -> 1 of 3
    with pytest.raises(ValueError, match="no user has >= 3 items"):
        most_popular_hr([["a", "b"]], 1)


def markov_hr(sequences: list[list[str]]) -> float:
    """First-order Markov (counts on training parts, history excluded, padded by popularity) at K."""
    nxt: dict[str, Counter] = defaultdict(Counter)
    pop = Counter()
    for seq in sequences:
        train = seq[:-2]
        pop.update(train)
        for a, b in zip(train[:-1], train[1:], strict=True):
            nxt[a][b] += 1
    ranked_pop = [i for i, _ in sorted(pop.items(), key=lambda kv: (-kv[1], kv[0]))]
    hits = 0
    for seq in sequences:
        hist, target = seq[:-1], seq[-1]
        seen = set(hist)
        ranked = [i for i, _ in sorted(nxt[hist[-1]].items(), key=lambda kv: (-kv[1], kv[0]))]
        top = [i for i in [*ranked, *ranked_pop] if i not in seen]
        hits += target in dict.fromkeys(top[:K])
    return hits / len(sequences)


def text_rule_hr(sequences: list[list[str]], titles: dict[str, str], words: int = 2) -> float:
    """Items whose title starts with the last history item's first `words` words (history excluded)."""
    by_prefix: dict[str, list[str]] = defaultdict(list)
    for item, title in sorted(titles.items()):
        by_prefix[" ".join(title.split()[:words])].append(item)
    hits = 0
    for seq in sequences:
        hist, target = seq[:-1], seq[-1]
        same = [i for i in by_prefix[" ".join(titles[hist[-1]].split()[:words])] if i not in set(hist)]
        hits += target in same[:K]
    return hits / len(sequences)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    cfg = demo_config(out, [])
    cfg.data.shards = dataclasses.replace(ShardConfig(engine="local"), samples_per_shard=20000)
    synthesize(cfg, out, None, None)
    prepare(cfg.data, cfg.corpus_dir())
    return cfg.corpus_dir()


def processed_dirs(corpus: Path) -> dict[str, Path]:
    dirs = {p.name: p for p in (corpus / "processed").iterdir()}
    for zs in (corpus / "zeroshot").iterdir():
        dirs |= {p.name: p for p in (zs / "processed").iterdir()}
    return dirs


@pytest.mark.integration
def test_demo_world_is_a_real_task(world: Path) -> None:
    dirs = processed_dirs(world)
    assert sorted(dirs) == ["beauty", "health", "home", "sports", "toys", "yelp"]
    for name, d in dirs.items():
        stats = dataset_stats(d, K)
        seqs = pq.read_table(d / "sequences.parquet", columns=["item_ids"])["item_ids"].to_pylist()
        mp, rand, markov = stats["most_popular_hr@10"], stats["random_hr@10"], markov_hr(seqs)
        assert stats["items"] >= 1000 and rand <= 0.01, (name, stats)
        assert mp <= 0.05, (name, stats)
        assert markov >= 2 * mp, (name, markov, stats)


@pytest.mark.integration
def test_held_out_platforms_have_text_structure(world: Path) -> None:
    for name in ("home", "yelp"):
        d = world / "zeroshot" / name / "processed" / name
        items = pq.read_table(d / "items.parquet", columns=["item_id", "title"]).to_pylist()
        titles = {r["item_id"]: r["title"] for r in items}
        seqs = pq.read_table(d / "sequences.parquet", columns=["item_ids"])["item_ids"].to_pylist()
        hr, rand = text_rule_hr(seqs, titles), K / len(titles)
        assert hr >= 5 * rand, (name, hr, rand)
