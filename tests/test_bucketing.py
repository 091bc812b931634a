"""Length bucketing (trainer/bucketing.py) over the real shard loader, one process: every sample exactly
once per epoch, the same number of batches, less padding, an exact resume from inside a window, and a
partly used window handed back (not lost) when its loader is closed.

The 2-rank DeepSpeed resume with bucketing is in test_idgenrec_dist.py (ZeRO-2 case).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fusionrec.data_pipeline.loader import LoaderConfig, ShardDataset, ShardLoader
from fusionrec.trainer.bucketing import BucketedLoader, bucket_window
from test_idgenrec import make_corpus

pytestmark = pytest.mark.unit
B, W = 4, 3


def _cost(sample) -> int:
    return len(sample["history"])


def _keys(batch) -> list[tuple[int, bool, int]]:  # what a collate of the test returns: (pos, pad, cost)
    return [(s["_pos"], s["_pad"], _cost(s)) for s in batch]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("bucket") / "corpus")  # 168 train samples


def _dataset(corpus: Path) -> ShardDataset:
    cfg = LoaderConfig(seed=3, splits=["train"], shuffle=True, batch_size=B, even_batches=True)
    return ShardDataset(corpus, cfg)


def _padded_width(batches) -> int:
    return sum(max(c for _, _, c in b) * len(b) for b in batches)


def test_bucket_window_regroups_each_sample_once_deterministically():
    batches = [[{"_pos": 10 * b + i, "_pad": False, "history": [0] * ((7 * b + 3 * i) % 9 + 1)} for i in range(B)]
               for b in range(W)]  # fmt: skip
    out = bucket_window(batches, _cost, seed=0, epoch=1)
    assert sorted(s["_pos"] for b in out for s in b) == sorted(s["_pos"] for b in batches for s in b)
    assert [len(b) for b in out] == [B] * W
    spans = sorted((min(map(_cost, b)), max(map(_cost, b))) for b in out)
    assert all(hi <= lo for (_, hi), (lo, _) in zip(spans, spans[1:], strict=False))  # sorted into bands
    assert out == bucket_window(batches, _cost, seed=0, epoch=1)
    orders = {tuple(b[0]["_pos"] for b in bucket_window(batches, _cost, seed=s, epoch=1)) for s in range(8)}
    assert len(orders) > 1  # the order of the regrouped batches is drawn, not always short-to-long


def test_epoch_exactly_once_same_batch_count_less_padding(corpus):
    plain = [_keys(b) for b in ShardLoader(_dataset(corpus))]
    bucketed = list(BucketedLoader(_dataset(corpus), _keys, _cost, W))
    real = sorted(p for b in bucketed for p, pad, _ in b if not pad)
    assert real == list(range(168)) and len(bucketed) == len(plain) == 42
    assert sum(pad for b in bucketed for _, pad, _ in b) == sum(pad for b in plain for _, pad, _ in b)
    assert _padded_width(bucketed) < 0.9 * _padded_width(plain)


@pytest.mark.parametrize("stop", [1, 5, 6])  # inside the first window, inside a later one, on a boundary
def test_resume_inside_a_window_continues_exactly(corpus, stop):
    full = list(BucketedLoader(_dataset(corpus), _keys, _cost, W))
    first = BucketedLoader(_dataset(corpus), _keys, _cost, W)
    it = iter(first)
    head = [next(it) for _ in range(stop)]
    state = first.state_dict()
    assert state["taken"] == (stop - 1) % W + 1 and len(first) == len(full) - stop
    second = BucketedLoader(_dataset(corpus), _keys, _cost, W)
    second.load_state_dict(state)
    assert head + list(second) == full


def test_close_inside_a_window_hands_back_the_unused_samples(corpus):
    dataset = _dataset(corpus)
    first = BucketedLoader(dataset, _keys, _cost, W)
    it = iter(first)
    head = [next(it) for _ in range(4)]  # one batch into the second window of three
    first.close()  # e.g. a phase bounded by steps ends here; the next phase builds a new loader
    rest = list(BucketedLoader(dataset, _keys, _cost, W))
    real = sorted(p for b in head + rest for p, pad, _ in b if not pad)
    assert real == list(range(168)) and len(head) + len(rest) == 42


def test_window_mismatch_on_resume_is_an_error(corpus):
    loader = BucketedLoader(_dataset(corpus), _keys, _cost, W)
    next(iter(loader))
    state = loader.state_dict()
    with pytest.raises(ValueError, match="bucket window of 3"):
        BucketedLoader(_dataset(corpus), _keys, _cost, 4).load_state_dict(state)
