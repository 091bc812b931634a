"""Metrics: hand-computed values on crafted rankings; merged partial sums == one-shot, exactly."""

from __future__ import annotations

import math

import pytest
import torch
from fusionrec.trainer.metrics import (
    MetricSums,
    auc_from_rank,
    hit_at_k,
    ndcg_at_k,
    ranks_from_scores,
    reciprocal_rank,
    target_ranks,
)

RANKED = torch.tensor([[3, 1, 2, 0, 4], [5, 6, 7, 8, 9], [9, 8, 7, 6, 5], [1, -1, -1, -1, -1]])
TARGETS = torch.tensor([2, 10, 5, 1])  # ranks 2, absent, 4, 0


@pytest.mark.unit
def test_target_ranks():
    assert target_ranks(RANKED, TARGETS).tolist() == [2, -1, 4, 0]


@pytest.mark.unit
def test_topk_metrics_hand_computed():
    m = MetricSums.from_topk(RANKED, TARGETS, ks=(1, 3, 5)).to_dict()
    assert m["count"] == 4
    assert m["HR@1"] == 1 / 4 and m["HR@3"] == 2 / 4 and m["HR@5"] == 3 / 4
    assert m["NDCG@1"] == pytest.approx(1 / 4, abs=1e-15)
    assert m["NDCG@3"] == pytest.approx((1 + 1 / 2) / 4, abs=1e-15)  # 1/log2(4) = 1/2
    assert m["NDCG@5"] == pytest.approx((1 + 1 / 2 + 1 / math.log2(6)) / 4, abs=1e-15)
    assert m["MRR@5"] == pytest.approx((1 / 3 + 0 + 1 / 5 + 1) / 4, abs=1e-15)
    assert "AUC" not in m and "MRR" not in m  # ranks beyond the list are unknown


@pytest.mark.unit
def test_full_rank_metrics_hand_computed():
    m = MetricSums.from_ranks(torch.tensor([0, 4, 2, 1]), num_candidates=5, ks=(1, 2)).to_dict()
    assert m["HR@1"] == 1 / 4 and m["HR@2"] == 2 / 4
    assert m["NDCG@2"] == pytest.approx((1 + 1 / math.log2(3)) / 4, abs=1e-15)
    assert m["MRR"] == pytest.approx((1 + 1 / 5 + 1 / 3 + 1 / 2) / 4, abs=1e-15)
    assert m["AUC"] == pytest.approx((4 / 4 + 0 / 4 + 2 / 4 + 3 / 4) / 4, abs=1e-15)


@pytest.mark.unit
def test_ranks_from_scores_ties_are_pessimistic():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.2], [1.0, 1.0, 1.0, 0.0, 0.0]])
    assert ranks_from_scores(scores, torch.tensor([2, 0])).tolist() == [1, 2]
    # Two candidates (DMPO-style pairwise AUC): preferred scored higher -> AUC 1, lower -> 0.
    pair = torch.tensor([[-1.0, -2.0], [-3.0, -0.5]])
    m = MetricSums.from_ranks(ranks_from_scores(pair, torch.tensor([0, 0])), num_candidates=2, ks=(1,))
    assert m.to_dict()["AUC"] == 0.5


@pytest.mark.unit
def test_merge_is_exactly_one_shot_and_matches_per_query_reference():
    gen = torch.Generator().manual_seed(0)
    n_items, ks = 500, (1, 5, 10, 20)
    ranks = torch.randint(0, n_items, (1001,), generator=gen) // torch.randint(1, 60, (1001,), generator=gen)
    one_shot = MetricSums.from_ranks(ranks, n_items, ks)
    parts = [MetricSums.from_ranks(p, n_items, ks) for p in torch.split(ranks, [1, 300, 7, 693])]
    assert (parts[3] + parts[0] + parts[2] + parts[1]).to_dict() == one_shot.to_dict()
    assert sum(parts).to_dict() == one_shot.to_dict()
    ref = one_shot.to_dict()
    for k in ks:
        assert ref[f"HR@{k}"] == pytest.approx(hit_at_k(ranks, k).mean().item(), abs=1e-12)
        assert ref[f"NDCG@{k}"] == pytest.approx(ndcg_at_k(ranks, k).mean().item(), abs=1e-12)
    assert ref["MRR"] == pytest.approx(reciprocal_rank(ranks).mean().item(), abs=1e-12)
    assert ref["AUC"] == pytest.approx(auc_from_rank(ranks, n_items).mean().item(), abs=1e-12)


@pytest.mark.unit
def test_topk_merge_with_padding_and_misses():
    gen = torch.Generator().manual_seed(1)
    items = torch.stack([torch.randperm(50, generator=gen)[:10] for _ in range(64)])
    items[::7, 6:] = -1  # some lists shorter than k
    targets = torch.randint(0, 50, (64,), generator=gen)
    one = MetricSums.from_topk(items, targets, ks=(5, 10))
    halves = MetricSums.from_topk(items[:20], targets[:20], (5, 10)) + MetricSums.from_topk(
        items[20:], targets[20:], (5, 10)
    )
    assert halves.to_dict() == one.to_dict() and one.count == 64
    r = target_ranks(items, targets)
    assert one.to_dict()["HR@10"] == (r >= 0).sum().item() / 64


@pytest.mark.unit
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: target_ranks(torch.tensor([[1, 2, 1]]), torch.tensor([1])), "row 0 lists item 1 twice"),
        (lambda: target_ranks(torch.tensor([[1, 2]]), torch.tensor([-3])), r"targets\[0\] = -3"),
        (lambda: target_ranks(torch.tensor([[1, 2]]), torch.tensor([1, 2])), "expected ranked_items"),
        (
            lambda: MetricSums.from_topk(torch.tensor([[1, 2]]), torch.tensor([1]), ks=(5,)),
            "depth >= 5, got 2",
        ),
        (lambda: MetricSums.from_ranks(torch.tensor([0, 9]), 5), r"must be in \[0, 5\)"),
        (lambda: MetricSums(ks=(0,)), "positive"),
        (lambda: MetricSums().to_dict(), "no queries"),
        (lambda: ranks_from_scores(torch.tensor([[float("nan"), 1.0]]), torch.tensor([0])), "NaN"),
        (lambda: MetricSums(ks=(1,), depth=2) + MetricSums(ks=(1,), depth=3), "cannot merge"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
