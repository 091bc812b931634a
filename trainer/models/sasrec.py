"""SASRec (Kang & McAuley, 2018, "Self-Attentive Sequential Recommendation"): architecture only.

Item embeddings (index 0 = padding, item i -> row i + 1) scaled by sqrt(d), plus learned absolute positions,
then `num_blocks` causal self-attention blocks (pre-LayerNorm queries as in the authors' code, point-wise
feed-forward), a final LayerNorm, and scores against the *shared* item embedding table.

One deliberate difference from the reference code: padding keys are masked. Sequences are left-padded
(right-aligned, so the newest item always has position `max_len`); masking padding keys makes every real
position's output independent of how much padding precedes it, so a batch may be trimmed to its longest
sequence (much faster on short-sequence data like Amazon) without changing any result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class SASRecConfig:
    num_items: int
    max_len: int = 50
    hidden: int = 64
    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.num_items < 1:
            raise ValueError(f"sasrec.num_items must be >= 1, got {self.num_items}")
        if self.max_len < 1 or self.num_blocks < 1:
            raise ValueError(f"sasrec.max_len={self.max_len} and num_blocks={self.num_blocks} must be >= 1")
        if self.hidden < 1 or self.hidden % self.num_heads:
            raise ValueError(
                f"sasrec.hidden={self.hidden} must be a positive multiple of num_heads={self.num_heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"sasrec.dropout must be in [0, 1), got {self.dropout}")


class SASRecBlock(nn.Module):
    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        d = cfg.hidden
        self.attn_norm = nn.LayerNorm(d, eps=1e-8)
        self.attn = nn.MultiheadAttention(d, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.ffn_norm = nn.LayerNorm(d, eps=1e-8)
        self.ffn = nn.Sequential(
            nn.Linear(d, d), nn.Dropout(cfg.dropout), nn.ReLU(), nn.Linear(d, d), nn.Dropout(cfg.dropout)
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        q = self.attn_norm(x)
        # Queries are normalised, keys/values are not: the authors' formulation.
        x = q + self.attn(q, x, x, attn_mask=attn_mask, need_weights=False)[0]
        x = self.ffn_norm(x)
        return x + self.ffn(x)


class SASRec(nn.Module):
    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.num_items + 1, cfg.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len + 1, cfg.hidden, padding_idx=0)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(SASRecBlock(cfg) for _ in range(cfg.num_blocks))
        self.final_norm = nn.LayerNorm(cfg.hidden, eps=1e-8)
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier-normal for every matrix, as the authors' code. PyTorch's N(0, 1) embedding default gives
        logits in the tens against 12k items (CE loss ~25 at start, nothing learned in an epoch)."""
        for name, p in self.named_parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)
            elif "norm" not in name:
                nn.init.zeros_(p)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
            self.pos_emb.weight[0].zero_()

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """seqs: [B, L] left-padded item rows (0 = pad), L <= max_len -> hidden states [B, L, d]."""
        bsz, length = seqs.shape
        if length > self.cfg.max_len:
            raise ValueError(f"sequence length {length} > sasrec.max_len {self.cfg.max_len}")
        real = seqs > 0
        # Right-aligned absolute positions: the newest item is always position max_len.
        pos = torch.arange(self.cfg.max_len - length + 1, self.cfg.max_len + 1, device=seqs.device)
        x = self.item_emb(seqs) * math.sqrt(self.cfg.hidden) + self.pos_emb(pos * real)
        x = self.emb_dropout(x) * real.unsqueeze(-1)
        for block in self.blocks:
            x = block(x, self._attn_mask(real)) * real.unsqueeze(-1)
        return self.final_norm(x)

    def _attn_mask(self, real: torch.Tensor) -> torch.Tensor:
        """[B * heads, L, L] bool (True = blocked): causal, padding keys blocked, the diagonal always open
        so padding queries never see an all-blocked row (their outputs are zeroed afterwards)."""
        length = real.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=real.device).triu(1)
        mask = causal.unsqueeze(0) | ~real.unsqueeze(1)
        mask = mask & ~torch.eye(length, dtype=torch.bool, device=real.device)
        return mask.repeat_interleave(self.cfg.num_heads, dim=0)

    def forward(self, seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states [B, L, d], item output embeddings [num_items, d]): both read inside forward, so an
        engine that partitions parameters (ZeRO-3) has them gathered for the loss."""
        return self.encode(seqs), self.item_weights()

    def item_weights(self) -> torch.Tensor:
        """[num_items, d] output embedding of every real item (shared with the input table)."""
        return self.item_emb.weight[1:]

    def last_hidden(self, seqs: torch.Tensor) -> torch.Tensor:
        """[B, d] state after the newest item: the query for next-item scores."""
        return self.encode(seqs)[:, -1, :]

    def full_scores(self, seqs: torch.Tensor) -> torch.Tensor:
        """[B, num_items] next-item scores over every item (column j = item j)."""
        return self.last_hidden(seqs) @ self.item_weights().T


def left_pad(seqs: list[np.ndarray], max_len: int, shift: int = 1, fill: int = 0) -> torch.Tensor:
    """[B, L] right-aligned rows of the last `max_len` entries (+shift), L = longest row (trimmed batch)."""
    length = max(1, min(max_len, max((len(s) for s in seqs), default=1)))
    out = np.full((len(seqs), length), fill, dtype=np.int64)
    for row, s in enumerate(seqs):
        tail = s[-length:]
        if len(tail):
            out[row, length - len(tail) :] = tail + shift
    return torch.from_numpy(out)
