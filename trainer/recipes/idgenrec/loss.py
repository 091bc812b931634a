"""IDGenRec's losses: teacher forcing (``shift_right``) and the recommender's token NLL, over the whole
vocabulary (``trainer.tokens.token_nll``) or restricted to the ID trie (``trie_token_nll``)."""

from __future__ import annotations

import torch
from fusionrec.trainer.decoding import CompiledTrie
from fusionrec.trainer.tokens import IGNORE_INDEX


def shift_right(labels: torch.Tensor, start: int, pad: int) -> torch.Tensor:
    """Teacher-forcing decoder input: [start, y_1 .. y_{T-1}], -100 -> pad."""
    dec = labels.new_full(labels.shape, pad)
    dec[:, 0] = start
    dec[:, 1:] = labels[:, :-1]
    return dec.masked_fill(dec == IGNORE_INDEX, pad)


def trie_token_nll(
    logits: torch.Tensor, labels: torch.Tensor, trie: CompiledTrie, restricted: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_nll` with each position's softmax restricted to the trie children of its prefix.

    The sum over an ID's positions is then exactly -log P(item) under the constrained decoder, a softmax
    over the catalogue: no gradient is spent on tokens that could never be decoded, and positions with a
    single continuation cost nothing. Labels must be trie paths (the current table's IDs + eos).
    ``restricted``: ``logits`` [B, T, C] hold only the columns of ``trie.emitted_tokens`` (the same loss and
    gradients, without the V - C columns the loss never reads).
    """
    keep = labels != IGNORE_INDEX
    nodes = trie.prefix_nodes(labels)[keep]
    targets = labels[keep]
    if (trie.step(nodes, targets) == trie.dead).any():  # structural: independent of the logits' values
        raise ValueError(
            "a label is not a path of the current ID trie (was the trie rebuilt with the table?)"
        )
    log_probs = trie.log_softmax(logits[keep].float(), nodes, restricted)
    if restricted:
        targets = trie.columns_of(targets)
    # an all-padding batch selects no logits: the sum is 0 and still a graph for DeepSpeed's backward
    return -log_probs.gather(1, targets[:, None]).sum(), keep.sum()
