"""The item-to-item transitions baseline: hand-computed counts and rankings, history exclusion, checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
from fusionrec.cluster.evaluator import UserBatch
from fusionrec.cluster.transitions import (
    TransitionFactory,
    TransitionScorer,
    fit_transitions,
    save_transitions,
)

pytestmark = pytest.mark.unit

# Training parts (items[:-2]) over 6 items: 0->1 three times, 0->2 once, 1->2 twice, 3->4 once, 2->5 once.
TRAIN = [np.array(s) for s in ([0, 1, 2], [0, 1, 2], [0, 1], [0, 2, 5], [3, 4])]


def test_counts_are_direct_successions_only() -> None:
    fit = fit_transitions(TRAIN, 6)
    pairs = {(int(a), int(b)): int(c) for a, b, c in zip(fit["src"], fit["dst"], fit["count"], strict=True)}
    assert pairs == {(0, 1): 3, (0, 2): 1, (1, 2): 2, (2, 5): 1, (3, 4): 1}  # 0->2 via 1 is not counted
    assert fit["popularity"].tolist() == [4, 3, 3, 1, 1, 1]


def test_last_item_decides_then_earlier_items_then_popularity() -> None:
    scorer = TransitionScorer(fit_transitions(TRAIN, 6), top_k=6, recent=2)
    # Last item 0: 1 (3) then 2 (1); the rest by the item before (3: 4 follows it), then popularity, index.
    top = scorer.rank(UserBatch(["u"], [np.array([3, 0])]))[0].tolist()
    assert top == [1, 2, 4, 0, 3, 5]
    # Last item 5 has no successor: its predecessor 2 decides (5), then popularity 0 > 1 = 2 > 3 = 4 (index).
    assert scorer.rank(UserBatch(["u"], [np.array([2, 5])]))[0].tolist() == [5, 0, 1, 2, 3, 4]
    masked = TransitionScorer(fit_transitions(TRAIN, 6), top_k=6, exclude_history=True, recent=2)
    assert masked.rank(UserBatch(["u"], [np.array([3, 0])]))[0].tolist() == [1, 2, 4, 5, -1, -1]


def test_checkpoint_round_trip(tmp_path) -> None:
    fit = fit_transitions(TRAIN, 6)
    ckpt = save_transitions(tmp_path / "t", fit, [f"i{n}" for n in range(6)])
    scorer = TransitionFactory(str(ckpt), top_k=3)()
    assert scorer.rank(UserBatch(["u"], [np.array([1])]))[0].tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match="expected 'most_popular'"):
        from fusionrec.cluster.baselines import MostPopularFactory

        MostPopularFactory(str(ckpt))()
