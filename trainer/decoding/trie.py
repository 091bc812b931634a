"""A prefix trie over tokenised item IDs, compiled into flat tensors for batched decoding.

Generative recommenders decode an item's textual ID token by token and must only ever produce IDs that
exist. The reference implementations (IDGenRec, OpenP5) walk a dict-of-dicts trie in a Python callback once
per beam per step; with 20 beams x a batch of users that callback, not the model, is what the step costs.

Here the trie is compiled once into CSR arrays so that a whole (batch x beams) step is a handful of tensor
ops:

* nodes are numbered in breadth-first order with children sorted by token, so the children of node ``n``
  are the contiguous edge range ``child_ptr[n]:child_ptr[n+1]`` of ``child_token`` / ``child_node``;
* ``edge_key = parent * key_stride + token`` is therefore globally sorted, and following a token from many
  nodes at once is one ``searchsorted``;
* the state after ``eos`` is a leaf that maps to an item index (``node_item``); one extra node (``dead``)
  absorbs any transition that leaves the trie;
* leaves and ``dead`` have a single edge, ``eos`` -> ``dead``. This mirrors the reference protocol, where
  ``prefix_allowed_tokens_fn`` must return a non-empty list: HF sometimes keeps a just-finished beam
  running (when fewer than ``num_beams`` unfinished candidates exist) and it then re-emits ``eos`` as a
  hypothesis with a ~-1e9 score. Those hypotheses are never items, but they fill HF's finished slots and
  so decide when ``early_stopping=True`` stops; keeping them makes our stopping identical to HF's.

Sequences are the ID tokens *without* special tokens: the decoder input starts with ``decoder_start`` (the
trie's root state) and every item ends with ``eos`` (appended here), exactly as HF ``generate`` produces it.
The arrays are built with numpy sorting (no Python loop over trie nodes), so a 12k-item trie compiles in
milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

PAD = -1  # padding in the [num_items, depth] token matrix; sorts before every real token
_TENSOR_FIELDS = (
    "child_ptr",
    "child_token",
    "child_node",
    "edge_key",
    "node_item",
    "item_leaf",
    "item_tokens",
    "item_nodes",
    "subtree_items",
    "emitted_tokens",
)


@dataclass(frozen=True)
class CompiledTrie:
    """Immutable tensor form of a prefix trie over item token sequences (see module docstring)."""

    child_ptr: torch.Tensor  # [num_nodes + 2] int64 CSR offsets; the dead node's range is empty
    child_token: torch.Tensor  # [E] int64, sorted within each node
    child_node: torch.Tensor  # [E] int64
    edge_key: torch.Tensor  # [E] int64, parent * key_stride + token, globally sorted
    node_item: torch.Tensor  # [num_nodes + 1] int64, item index of leaf nodes, -1 elsewhere
    item_leaf: torch.Tensor  # [num_items] int64, leaf node of each item
    item_tokens: torch.Tensor  # [num_items, max_depth] int64, tokens + eos, padded with -1
    item_nodes: torch.Tensor  # [num_items, max_depth] int64, node after each token (root excluded), -1 padded
    subtree_items: torch.Tensor  # [num_nodes + 1] int64, number of items below each node (dead: 0)
    # [C] int64, sorted: every token an edge emits (eos included), the only vocabulary columns a constrained
    # decoder ever reads; a loss over them needs C of the V logit columns (`log_softmax(restricted=True)`)
    emitted_tokens: torch.Tensor
    item_ids: tuple[Hashable, ...]
    decoder_start_token_id: int
    eos_token_id: int
    key_stride: int
    _index: dict[Hashable, int] = field(repr=False, compare=False, default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        sequences: Sequence[Sequence[int]],
        item_ids: Sequence[Hashable] | None = None,
        *,
        decoder_start_token_id: int,
        eos_token_id: int,
    ) -> CompiledTrie:
        """Compile the trie of ``[decoder_start] + seq + [eos]`` for every item.

        ``item_ids[i]`` names ``sequences[i]`` (default: ``i``). Raises ValueError on an empty sequence, a
        negative token, a sequence that already contains ``eos`` (it would end the ID early), duplicate item
        ids, and two items with the same tokenisation (both named: they could never be told apart).
        """
        ids = tuple(range(len(sequences))) if item_ids is None else tuple(item_ids)
        if len(ids) != len(sequences):
            raise ValueError(f"{len(sequences)} sequences but {len(ids)} item ids")
        if not sequences:
            raise ValueError("cannot build a trie over zero items")
        index = _unique_index(ids)
        tokens = _padded_tokens(sequences, ids, eos_token_id)
        order, tokens_sorted = _sort_and_check_duplicates(tokens, ids)
        arrays = _compile_sorted(tokens_sorted, order, eos_token_id)
        stride = int(tokens.max()) + 1
        t = {k: torch.from_numpy(v) for k, v in arrays.items()}
        return cls(
            child_ptr=t["child_ptr"],
            child_token=t["child_token"],
            child_node=t["child_node"],
            edge_key=t["edge_parent"] * stride + t["child_token"],
            node_item=t["node_item"],
            item_leaf=t["item_leaf"],
            item_tokens=torch.from_numpy(tokens),
            item_nodes=t["item_nodes"],
            subtree_items=t["subtree_items"],
            emitted_tokens=torch.unique(t["child_token"]),
            item_ids=ids,
            decoder_start_token_id=int(decoder_start_token_id),
            eos_token_id=int(eos_token_id),
            key_stride=stride,
            _index=index,
        )

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer,
        texts: Sequence[str],
        item_ids: Sequence[Hashable] | None = None,
        *,
        decoder_start_token_id: int,
    ) -> CompiledTrie:
        """Tokenise textual IDs without special tokens and compile them.

        Raises ValueError naming the item when an ID encodes to nothing or to the unknown token: such an ID
        could be generated but never mapped back to its item.
        """
        ids = tuple(range(len(texts))) if item_ids is None else tuple(item_ids)
        encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        unk = getattr(tokenizer, "unk_token_id", None)
        for item, text, toks in zip(ids, texts, encoded, strict=True):
            if unk is not None and unk in toks:
                raise ValueError(
                    f"item {item!r}: textual ID {text!r} contains a token the tokenizer cannot encode"
                )
        return cls.build(
            encoded, ids, decoder_start_token_id=decoder_start_token_id, eos_token_id=tokenizer.eos_token_id
        )

    # ------------------------------------------------------------------ properties
    @property
    def num_items(self) -> int:
        return int(self.item_leaf.numel())

    @property
    def num_nodes(self) -> int:
        """Real nodes (root, inner nodes, leaves); the dead node is extra."""
        return int(self.node_item.numel()) - 1

    @property
    def root(self) -> int:
        return 0

    @property
    def dead(self) -> int:
        return self.num_nodes

    @property
    def max_depth(self) -> int:
        """Longest item in generated tokens, eos included (= HF ``max_new_tokens`` that reaches every item)."""
        return int(self.item_tokens.shape[1])

    @property
    def device(self) -> torch.device:
        return self.child_ptr.device

    def to(self, device: torch.device | str) -> CompiledTrie:
        tensors = {name: getattr(self, name).to(device) for name in _TENSOR_FIELDS}
        return replace(self, **tensors, _index=self._index)

    # ------------------------------------------------------------------ vectorised operations
    def expand(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All (row, edge) pairs leaving ``nodes`` [R]: row index into ``nodes`` and edge index, row-major.

        This is the whole constraint of one decoding step: a few tensor ops regardless of batch x beams.
        """
        starts = self.child_ptr[nodes]
        counts = self.child_ptr[nodes + 1] - starts
        rows = torch.repeat_interleave(torch.arange(nodes.numel(), device=nodes.device), counts)
        # edge = start of its row's range + position within that row's range
        first_pos = torch.cumsum(counts, 0) - counts
        edges = torch.arange(rows.numel(), device=nodes.device) + (starts - first_pos)[rows]
        return rows, edges

    def step(self, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Node reached from each of ``nodes`` by the matching token; ``dead`` where the trie has no edge."""
        keys = nodes * self.key_stride + tokens
        pos = torch.searchsorted(self.edge_key, keys).clamp_(max=self.edge_key.numel() - 1)
        hit = (self.edge_key[pos] == keys) & (tokens >= 0) & (tokens < self.key_stride)
        return torch.where(hit, self.child_node[pos], torch.full_like(nodes, self.dead))

    def prefix_nodes(self, labels: torch.Tensor) -> torch.Tensor:
        """Node *before* each label token [B, T]: the root, then the node each teacher-forced prefix reaches.

        ``labels`` are [B, T] generated tokens (eos included, ``-100`` padding); a prefix that left the trie
        (or padding) gives ``dead``. T vectorised :meth:`step` calls, no Python loop over the batch.
        """
        nodes = torch.full(labels.shape[:1], self.root, dtype=torch.long, device=labels.device)
        out = torch.empty(labels.shape, dtype=torch.long, device=labels.device)
        for j in range(labels.shape[1]):
            out[:, j] = nodes
            nodes = self.step(nodes, labels[:, j])
        return out

    def log_softmax(
        self, logits: torch.Tensor, nodes: torch.Tensor, restricted: bool = False
    ) -> torch.Tensor:
        """Log-softmax of ``logits`` [R, V] over each row's trie children only (``nodes`` [R]): the item-level
        distribution of a model trained with the trie softmax. Non-children get ``-inf``.

        ``restricted``: the columns of ``logits`` [R, C] are :attr:`emitted_tokens`, not the vocabulary. The
        values are the same (every child is an emitted token; the other columns are ``-inf`` either way)."""
        rows, edges = self.expand(nodes)
        cols = self.child_token[edges]
        if restricted:
            cols = self.columns_of(cols)
        allowed = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
        allowed[rows, cols] = True
        return torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)

    def columns_of(self, tokens: torch.Tensor) -> torch.Tensor:
        """Column of each emitted token in a ``restricted`` logit matrix (tokens must be emitted tokens)."""
        return torch.searchsorted(self.emitted_tokens, tokens)

    def leaf_of(self, items: torch.Tensor) -> torch.Tensor:
        """Leaf node of each item index (``-1`` entries map to ``-1``)."""
        return torch.where(items >= 0, self.item_leaf[items.clamp(min=0)], items)

    # ------------------------------------------------------------------ Python-side helpers
    def index_of(self, item_id: Hashable) -> int:
        try:
            return self._index[item_id]
        except KeyError:
            raise ValueError(f"item {item_id!r} is not in the trie ({self.num_items} items)") from None

    def indices(self, item_ids: Sequence[Hashable]) -> list[int]:
        return [self.index_of(i) for i in item_ids]

    def sequence(self, item: int) -> list[int]:
        """Generated tokens of item index ``item`` (eos included)."""
        row = self.item_tokens[item]
        return row[row != PAD].tolist()

    def lookup(self, generated: Sequence[int]) -> int:
        """Item index of a generated sequence (``decoder_start`` + tokens + ``eos``, trailing pads ignored).

        Returns -1 when the sequence is not an item: the independent check that decoding stayed in the trie.
        """
        toks = list(generated)
        if not toks or toks[0] != self.decoder_start_token_id:
            return -1
        node = self.root
        for tok in toks[1:]:
            node = int(self.step(torch.tensor([node]), torch.tensor([int(tok)]))[0])
            if node == self.dead:
                return -1
            item = int(self.node_item[node])
            if item >= 0:
                return item
        return -1

    def prefix_allowed_tokens_fn(self) -> Callable[[int, torch.Tensor], list[int]]:
        """The reference protocol: a HF ``prefix_allowed_tokens_fn`` walking a nested-dict trie in Python.

        This is how IDGenRec/OpenP5 constrain ``generate`` (one call per beam per step). A prefix that left
        the trie (a beam with score -inf) gets ``[eos]``: transformers 5 raises on an empty list.
        """
        root = self._as_dict()
        start, eos = self.decoder_start_token_id, self.eos_token_id

        def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
            toks = sent.tolist()
            node = root if toks and toks[0] == start else None
            for tok in toks[1:]:
                node = node.get(tok) if node is not None else None
            return list(node) if node else [eos]

        return allowed

    def _as_dict(self) -> dict:
        root: dict = {}
        for item in range(self.num_items):
            node = root
            for tok in self.sequence(item):
                node = node.setdefault(tok, {})
        return root


# ---------------------------------------------------------------------- build helpers (numpy)
def _unique_index(ids: tuple[Hashable, ...]) -> dict[Hashable, int]:
    index: dict[Hashable, int] = {}
    for i, item in enumerate(ids):
        if item in index:
            raise ValueError(f"duplicate item id {item!r} at positions {index[item]} and {i}")
        index[item] = i
    return index


def _padded_tokens(sequences: Sequence[Sequence[int]], ids: tuple[Hashable, ...], eos: int) -> np.ndarray:
    """[num_items, max_len + 1] int64: tokens, then eos, then PAD."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    for i in np.flatnonzero(lengths == 0)[:1]:
        raise ValueError(f"item {ids[i]!r} (position {i}) has an empty token sequence")
    out = np.full((len(sequences), int(lengths.max()) + 1), PAD, dtype=np.int64)
    flat = np.fromiter((int(t) for s in sequences for t in s), dtype=np.int64, count=int(lengths.sum()))
    mask = np.arange(out.shape[1])[None, :] < lengths[:, None]
    out[mask] = flat
    out[np.arange(len(sequences)), lengths] = eos
    bad = (flat < 0) | (flat == eos)
    if bad.any():
        row = int(np.searchsorted(np.cumsum(lengths), int(np.flatnonzero(bad)[0]), side="right"))
        raise ValueError(
            f"item {ids[row]!r} (position {row}): token sequence {list(sequences[row])} contains a negative "
            f"token or the eos token {eos}"
        )
    return out


def _sort_and_check_duplicates(
    tokens: np.ndarray, ids: tuple[Hashable, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Lexicographic row order (column 0 primary); ValueError naming two items with equal sequences."""
    order = np.lexsort(tokens.T[::-1])
    sorted_tokens = tokens[order]
    same = np.all(sorted_tokens[1:] == sorted_tokens[:-1], axis=1)
    if same.any():
        j = int(np.flatnonzero(same)[0])
        a, b = sorted((int(order[j]), int(order[j + 1])))
        raise ValueError(
            f"items {ids[a]!r} (position {a}) and {ids[b]!r} (position {b}) have the same token sequence "
            f"{tokens[a][tokens[a] != PAD][:-1].tolist()}: textual IDs must be unique after tokenisation"
        )
    return order, sorted_tokens


def _compile_sorted(tokens: np.ndarray, order: np.ndarray, eos: int) -> dict[str, np.ndarray]:
    """Breadth-first node numbering of lexicographically sorted rows, as CSR arrays."""
    n, depth = tokens.shape
    valid = tokens != PAD
    # A position starts a new node where the prefix up to it differs from the previous row's prefix.
    differs = np.ones_like(valid)
    differs[1:] = np.logical_or.accumulate(tokens[1:] != tokens[:-1], axis=1)
    new = valid & differs
    per_depth = new.sum(axis=0)
    offsets = 1 + np.concatenate([[0], np.cumsum(per_depth)[:-1]])
    node = np.where(new, offsets[None, :] + np.cumsum(new, axis=0) - 1, -1)
    node = np.maximum.accumulate(node, axis=0)  # rows sharing a prefix share its node (ids grow down rows)
    node[~valid] = -1
    parent = np.concatenate([np.zeros((n, 1), dtype=np.int64), node[:, :-1]], axis=1)
    # Edges in child-id order (= depth-major, then row order): the BFS numbering makes this CSR-sorted.
    dd, rr = np.nonzero(new.T)
    num_nodes = 1 + int(per_depth.sum())
    dead = num_nodes
    lengths = valid.sum(axis=1)
    leaves = node[np.arange(n), lengths - 1]
    # Absorbing edges leaf --eos--> dead and dead --eos--> dead (see CompiledTrie docs: HF compatibility).
    absorbing = np.append(leaves, dead)
    edge_parent = np.concatenate([parent[rr, dd], absorbing])
    edge_token = np.concatenate([tokens[rr, dd], np.full(n + 1, eos)])
    edge_child = np.concatenate([node[rr, dd], np.full(n + 1, dead)])
    by_key = np.lexsort((edge_token, edge_parent))
    edge_parent, edge_token, edge_child = edge_parent[by_key], edge_token[by_key], edge_child[by_key]
    counts = np.bincount(edge_parent, minlength=num_nodes + 1)
    node_item = np.full(num_nodes + 1, -1, dtype=np.int64)
    node_item[leaves] = order
    item_leaf = np.empty(n, dtype=np.int64)
    item_leaf[order] = leaves
    item_nodes = np.empty_like(node)
    item_nodes[order] = node
    subtree = np.bincount(node[valid], minlength=num_nodes + 1).astype(np.int64)
    subtree[0] = n  # the root is on every path but not stored in `node`
    return {
        "child_ptr": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "child_token": edge_token.astype(np.int64),
        "child_node": edge_child.astype(np.int64),
        "edge_parent": edge_parent.astype(np.int64),
        "node_item": node_item,
        "item_leaf": item_leaf,
        "item_nodes": item_nodes,
        "subtree_items": subtree,
    }
