"""CompiledTrie: exact CSR layout on a hand-built trie, equality with a dict trie, errors, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fusionrec.trainer.decoding import CompiledTrie

EOS, START = 1, 0


def _small() -> CompiledTrie:
    # items: a=[5,7], b=[5], c=[5,7,9], d=[3]
    return CompiledTrie.build(
        [[5, 7], [5], [5, 7, 9], [3]], ["a", "b", "c", "d"], decoder_start_token_id=START, eos_token_id=EOS
    )


def _random_sequences(n: int, vocab: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, ...]] = set()
    out: list[list[int]] = []
    while len(out) < n:
        seq = tuple(int(t) for t in rng.integers(2, vocab, int(rng.integers(1, 7))))
        if seq not in seen:
            seen.add(seq)
            out.append(list(seq))
    return out


@pytest.mark.unit
def test_hand_built_layout_is_exact():
    trie = _small()
    # BFS numbering, children sorted by token:
    # depth 1: 1=[3] 2=[5]; depth 2: 3=[3,eos] 4=[5,eos] 5=[5,7];
    # depth 3: 6=[5,7,eos] 7=[5,7,9]; depth 4: 8=[5,7,9,eos]
    assert trie.num_nodes == 9 and trie.dead == 9 and trie.max_depth == 4
    # leaves 3, 4, 6, 8 and dead 9 carry the absorbing edge eos -> dead
    assert trie.child_ptr.tolist() == [0, 2, 3, 5, 6, 7, 9, 10, 11, 12, 13]
    assert trie.child_token.tolist() == [3, 5, EOS, EOS, 7, EOS, EOS, EOS, 9, EOS, EOS, EOS, EOS]
    assert trie.child_node.tolist() == [1, 2, 3, 4, 5, 9, 9, 6, 7, 9, 8, 9, 9]
    assert trie.node_item.tolist() == [-1, -1, -1, 3, 1, -1, 0, -1, 2, -1]
    assert trie.item_leaf.tolist() == [6, 4, 8, 3]
    assert trie.subtree_items.tolist() == [4, 1, 3, 1, 1, 2, 1, 1, 1, 0]
    assert trie.item_nodes[2].tolist() == [2, 5, 7, 8]
    assert trie.item_nodes[1].tolist() == [2, 4, -1, -1]
    assert trie.sequence(2) == [5, 7, 9, EOS]


@pytest.mark.unit
def test_step_and_expand_vectorised():
    trie = _small()
    nodes = torch.tensor([0, 0, 2, 5, 5, 7, 6, 9, 2])
    toks = torch.tensor([5, 4, EOS, 9, 8, EOS, EOS, 5, 100])
    assert trie.step(nodes, toks).tolist() == [2, 9, 4, 7, 9, 8, 9, 9, 9]
    rows, edges = trie.expand(torch.tensor([2, 9, 0, 6, 5]))
    assert rows.tolist() == [0, 0, 1, 2, 2, 3, 4, 4]
    assert trie.child_token[edges].tolist() == [EOS, 7, EOS, 3, 5, EOS, EOS, 9]
    assert trie.child_node[edges].tolist() == [4, 5, 9, 1, 2, 9, 6, 7]


@pytest.mark.unit
def test_random_trie_equals_dict_trie():
    seqs = _random_sequences(2000, 50, seed=1)
    trie = CompiledTrie.build(
        seqs, [f"i{i}" for i in range(len(seqs))], decoder_start_token_id=START, eos_token_id=EOS
    )
    ref: dict = {}
    for s in seqs:
        node = ref
        for t in [*s, EOS]:
            node = node.setdefault(t, {})
    allowed = trie.prefix_allowed_tokens_fn()
    # Walk every item: at every prefix the compiled children equal the dict trie's keys (sorted).
    for i, s in enumerate(seqs):
        node, ref_node = trie.root, ref
        for depth, t in enumerate([*s, EOS]):
            _, edges = trie.expand(torch.tensor([node]))
            assert trie.child_token[edges].tolist() == sorted(ref_node)
            assert sorted(allowed(0, torch.tensor([START, *s[:depth]]))) == sorted(ref_node)
            node, ref_node = int(trie.step(torch.tensor([node]), torch.tensor([t]))[0]), ref_node[t]
        assert int(trie.node_item[node]) == i
        assert trie.lookup([START, *s, EOS]) == i
        assert trie.index_of(f"i{i}") == i
    n_ref_nodes = _count(ref)
    assert trie.num_nodes == n_ref_nodes + 1  # + root
    assert int(trie.subtree_items[trie.root]) == len(seqs)


def _count(d: dict) -> int:
    return sum(1 + _count(v) for v in d.values())


@pytest.mark.unit
def test_prefix_allowed_tokens_fn_protocol():
    fn = _small().prefix_allowed_tokens_fn()
    assert sorted(fn(0, torch.tensor([START]))) == [3, 5]
    assert sorted(fn(0, torch.tensor([START, 5]))) == [EOS, 7]
    assert fn(0, torch.tensor([START, 5, 7, 9])) == [EOS]
    assert fn(0, torch.tensor([START, 4])) == [EOS]  # left the trie: a -inf beam, HF forbids []


@pytest.mark.unit
def test_lookup_rejects_non_items():
    trie = _small()
    assert trie.lookup([START, 5, 7, EOS, 1, 1]) == 0  # trailing padding ignored
    assert trie.lookup([START, 5, 7]) == -1  # unfinished
    assert trie.lookup([START, 4, EOS]) == -1
    assert trie.lookup([EOS, 5, EOS]) == -1  # wrong start token


@pytest.mark.unit
def test_duplicate_tokenisation_names_both_items():
    with pytest.raises(ValueError, match=r"'x' \(position 0\) and 'z' \(position 2\).*\[4, 2\]"):
        CompiledTrie.build(
            [[4, 2], [4], [4, 2]], ["x", "y", "z"], decoder_start_token_id=START, eos_token_id=EOS
        )


@pytest.mark.unit
@pytest.mark.parametrize(
    ("seqs", "ids", "match"),
    [
        ([[3], []], ["a", "b"], r"item 'b' \(position 1\) has an empty token sequence"),
        ([[3], [4, EOS, 5]], ["a", "b"], r"item 'b' \(position 1\).*eos token"),
        ([[3], [4, -2]], ["a", "b"], r"item 'b' \(position 1\).*negative"),
        ([[3], [4]], ["a", "a"], r"duplicate item id 'a' at positions 0 and 1"),
        ([], [], "zero items"),
        ([[3]], ["a", "b"], "1 sequences but 2 item ids"),
    ],
)
def test_bad_input(seqs, ids, match):
    with pytest.raises(ValueError, match=match):
        CompiledTrie.build(seqs, ids, decoder_start_token_id=START, eos_token_id=EOS)


@pytest.mark.unit
def test_unknown_item_id():
    with pytest.raises(ValueError, match=r"item 'nope' is not in the trie \(4 items\)"):
        _small().index_of("nope")


@pytest.mark.unit
def test_to_device_keeps_content():
    trie = _small()
    moved = trie.to(torch.device("cpu"))
    assert moved.device.type == "cpu" and moved.item_ids == trie.item_ids
    assert torch.equal(moved.edge_key, trie.edge_key) and moved.index_of("c") == 2


@pytest.mark.gpu
def test_to_cuda():
    trie = _small().to("cuda")
    assert trie.step(torch.tensor([0], device="cuda"), torch.tensor([5], device="cuda")).item() == 2


@pytest.mark.slow
def test_from_real_t5_tokenizer(t5_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(t5_tokenizer_dir))
    texts = ["lipstick red matte", "eye shadow palette", "lipstick red"]
    trie = CompiledTrie.from_tokenizer(tok, texts, ["a", "b", "c"], decoder_start_token_id=tok.pad_token_id)
    for i, text in enumerate(texts):
        ids = tok(text).input_ids  # with the tokenizer's own trailing </s>
        assert trie.lookup([tok.pad_token_id, *ids]) == i
    with pytest.raises(ValueError, match=r"item 'b'.*cannot encode"):
        CompiledTrie.from_tokenizer(tok, ["ok", "\u2603\u2603"], ["a", "b"], decoder_start_token_id=0)


@pytest.mark.unit
def test_prefix_nodes_and_trie_log_softmax_by_hand():
    trie = _small()  # nodes as in test_hand_built_layout_is_exact
    labels = torch.tensor([[5, 7, EOS, -100], [3, EOS, -100, -100], [5, 8, EOS, -100]])
    assert trie.prefix_nodes(labels).tolist() == [
        [0, 2, 5, 6],
        [0, 1, 3, trie.dead],
        [0, 2, trie.dead, trie.dead],
    ]
    logits = torch.arange(12.0).repeat(2, 1)  # vocab 12
    out = trie.log_softmax(logits, torch.tensor([0, 5]))
    # root: children 3 and 5; node 5 = [5,7]: children eos and 9
    assert torch.isfinite(out).sum(1).tolist() == [2, 2]
    torch.testing.assert_close(out[0, [3, 5]], torch.log_softmax(torch.tensor([3.0, 5.0]), 0))
    torch.testing.assert_close(out[1, [EOS, 9]], torch.log_softmax(torch.tensor([1.0, 9.0]), 0))
    # restricted: the logits hold only the emitted tokens' columns; the same values, in fewer columns
    assert trie.emitted_tokens.tolist() == [EOS, 3, 5, 7, 9]
    cols = trie.emitted_tokens
    small = trie.log_softmax(logits[:, cols], torch.tensor([0, 5]), restricted=True)
    torch.testing.assert_close(small, out[:, cols])
    assert trie.columns_of(torch.tensor([9, 3, EOS])).tolist() == [4, 1, 0]
    assert trie.to("cpu").emitted_tokens is not None  # moved with the other tensors
