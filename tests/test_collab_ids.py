"""Collaborative initial IDs (trainer/idgen/collab_ids.py, `idgenrec.initial_ids = "collab"`): hand-computed
co-occurrence weights, distinct short hierarchical codes that never mix separated groups, co-bought items
sharing their ID's first word, training samples only, and the same table under the reduced tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
from fusionrec.trainer.idgen.collab_ids import (
    collab_table,
    cooccurrence,
    hierarchical_codes,
    level_words,
)

pytestmark = pytest.mark.unit


def test_cooccurrence_weights_are_one_over_the_distance_and_symmetric():
    items = ["a", "b", "c", "d"]
    samples = [{"history": ["a", "b", "c"], "target": "d"}, {"history": ["a"], "target": "b"},
               {"history": ["d", "d"], "target": "d"}]  # fmt: skip
    dense = cooccurrence(samples, items, window=2).to_dense().numpy()
    expected = np.zeros((4, 4))
    expected[2, 3] = expected[3, 2] = 1.0  # c -> d, distance 1
    expected[1, 3] = expected[3, 1] = 0.5  # b -> d, distance 2 (a is beyond the window)
    expected[0, 1] = expected[1, 0] = 1.0  # a -> b
    np.testing.assert_allclose(dense, expected)  # self-pairs (d -> d) are not edges
    with pytest.raises(ValueError, match="'z'"):
        cooccurrence([{"history": ["z"], "target": "a"}], items, window=2)


def test_hierarchical_codes_are_distinct_small_leaves_that_never_mix_separated_groups():
    rng = np.random.default_rng(0)
    blobs = [rng.normal(0, 0.01, (10, 2)) + centre for centre in ([5, 0], [-5, 0], [0, 5])]
    x = np.concatenate(blobs)
    codes = hierarchical_codes(x, branching=4, seed=0)
    assert len(set(codes)) == 30 and all(0 <= c < 4 for code in codes for c in code)
    group = np.repeat([0, 1, 2], 10)
    for i in range(30):
        for j in range(30):
            if group[i] != group[j]:
                assert codes[i][0] != codes[j][0]
    same = hierarchical_codes(np.zeros((9, 2)), branching=4, seed=0)  # no structure: split by order
    assert len(set(same)) == 9 and max(len(c) for c in same) == 2


def test_level_words_are_disjoint_frequent_short_words_or_a_clear_error():
    titles = {"1": "Red Brush red", "2": "red lotion brush", "3": "blue lotion", "4": "Superlongword ok"}
    words = level_words(titles, levels=2, branching=2, encodable=lambda w: True)
    assert words == [["red", "brush"], ["lotion", "blue"]]  # counts 3, 2, 2, 1; ties by word
    with pytest.raises(ValueError, match="need 12 distinct short title words"):
        level_words(titles, levels=3, branching=4, encodable=lambda w: True)


def test_cobought_items_share_their_first_id_word():
    """Two communities of 8 items each, bought only within the community: no first ID word is shared between
    them (4 clusters per level: each community takes its own)."""
    items = [f"i{k}" for k in range(16)]
    vocab = "red blue pink gold lotion brush mirror mini set oil gel wax tint balm mask soap".split()
    titles = {item: f"{vocab[k]} {vocab[(k * 7) % 16]} {vocab[(k * 3) % 16]}" for k, item in enumerate(items)}
    rng = np.random.default_rng(1)
    samples = []
    for community in (items[:8], items[8:]):
        for _ in range(200):
            walk = list(rng.choice(community, 4))
            samples.append({"history": walk[:3], "target": walk[3]})
    table = collab_table(samples, titles, lambda w: True, branching=4, dim=4)
    ids = table.as_dict()
    first = [ids[i].split()[0] for i in items]
    assert not set(first[:8]) & set(first[8:])
    assert table.stats["initial"] == "collab" and len(set(ids.values())) == 16
    assert collab_table(samples, titles, lambda w: True, branching=4, dim=4).hash == table.hash
