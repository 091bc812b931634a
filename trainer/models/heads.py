"""An LM head restricted to some vocabulary columns (architecture only).

A loss or a search that reads only a few logit columns (the trie softmax reads the tokens an ID trie emits:
~140 of 7,400 with collaborative IDs) need not compute the rest. T5's forward ends in
``lm_head(scaled decoder output)``, so swapping the head for one that computes only those columns gives
exactly the columns of the full logits. BART adds a [V] bias after its head and is left as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class ColumnHead(nn.Module):
    """An LM head computing only the logit columns ``columns`` of ``head`` (the same Parameter, so a tied
    weight stays tied). It reads ``head.weight`` outside ``head``'s forward: not for ZeRO-3 partitioning."""

    def __init__(self, head: nn.Linear, columns: torch.Tensor) -> None:
        super().__init__()
        self.head, self.columns = head, columns

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        bias = None if self.head.bias is None else self.head.bias[self.columns]
        return nn.functional.linear(hidden, self.head.weight[self.columns], bias)


@contextmanager
def column_head(model: nn.Module, columns: torch.Tensor | None) -> Iterator[bool]:
    """Within the block, ``model``'s logits are its full logits' ``columns`` only; yields whether they are
    (False, full logits: no columns given, or not a T5 with a linear head)."""
    head = model.get_output_embeddings() if columns is not None else None
    if head is None or model.config.model_type != "t5" or not isinstance(head, nn.Linear):
        yield False
        return
    model.set_output_embeddings(ColumnHead(head, columns))
    try:
        yield True
    finally:
        model.set_output_embeddings(head)
