"""A seq2seq recommender whose prompt may carry *soft* item IDs (IDGenRec §2.5.2, eq. 5).

In the ID-generator phase the item IDs in a prompt are not tokens but distributions over the vocabulary:
the ID generator's per-step softmax. Their embedding is `probs @ E` with E the recommender's input embedding
matrix, inserted at the exact token positions of each item's ID in the prompt. Architecture only: no
distributed code. Two details matter for ZeRO-3:

* The soft lookup runs *inside* the embedding module's forward (`SoftEmbedding`), so DeepSpeed's parameter
  gathering hooks, which fire on a module's forward, see it; reading `embedding.weight` from outside would
  find an empty, partitioned tensor.
* The replacement embedding keeps the very same `Parameter`, so a tied LM head (T5) stays tied.
* The soft lookup must be the embedding's *last* call in a forward: DeepSpeed's pre-forward hook resets the
  parameter's pending-gradient count on every call, and a hard lookup after the soft one (the decoder's,
  inside the HF model) leaves the shared weight un-released after backward; the next gather then fails.
  So the decoder inputs are embedded here, first, and handed over as `decoder_inputs_embeds`.

`forward(..., output_columns=C)` returns logits over the vocabulary columns C only (a T5 head, ZeRO-0/1/2;
`heads.column_head`): a loss that reads only those columns skips the rest of the head's work and backward.
"""

from __future__ import annotations

import torch
from torch import nn

from .heads import column_head


class SoftEmbedding(nn.Embedding):
    """nn.Embedding that also accepts a float tensor of token distributions [..., V] → [..., d]."""

    embed_scale: float = 1.0  # BART-style scaled embeddings keep their scale (T5: 1.0)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.is_floating_point():
            out = inputs.to(self.weight.dtype) @ self.weight
        else:
            out = super().forward(inputs)
        return out * self.embed_scale if self.embed_scale != 1.0 else out

    @classmethod
    def wrap(cls, emb: nn.Embedding) -> SoftEmbedding:
        new = cls(emb.num_embeddings, emb.embedding_dim, padding_idx=emb.padding_idx, _weight=emb.weight)
        new.weight = emb.weight  # the same Parameter object: ties and optimizer state stay intact
        new.embed_scale = float(getattr(emb, "embed_scale", 1.0))
        return new


class SoftIDRecommender(nn.Module):
    """Wraps a HF encoder-decoder; `forward` takes optional soft IDs to splice into the prompt embeddings.

    soft_probs:  [N, V] float — one row per prompt token that belongs to a soft ID.
    soft_index:  [N, 2] long  — (batch row, token position) of each of those rows, exact positions.
    """

    def __init__(self, seq2seq: nn.Module) -> None:
        super().__init__()
        self.model = seq2seq
        emb = seq2seq.get_input_embeddings()
        if not isinstance(emb, SoftEmbedding):
            soft = SoftEmbedding.wrap(emb)
            seq2seq.set_input_embeddings(soft)
        self.config = seq2seq.config

    @property
    def embedding(self) -> SoftEmbedding:
        return self.model.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        soft_probs: torch.Tensor | None = None,
        soft_index: torch.Tensor | None = None,
        output_columns: torch.Tensor | None = None,
        **kwargs,
    ):
        with column_head(self.model, output_columns) as restricted:
            assert restricted or output_columns is None, "output_columns needs a T5 head"
            return self._forward(input_ids, attention_mask, labels, soft_probs, soft_index, **kwargs)

    def _forward(self, input_ids, attention_mask, labels, soft_probs, soft_index, **kwargs):
        if soft_probs is None:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        if labels is not None and "decoder_input_ids" not in kwargs and "decoder_inputs_embeds" not in kwargs:
            dec_ids = self.model.prepare_decoder_input_ids_from_labels(labels=labels)
            kwargs["decoder_inputs_embeds"] = self.embedding(dec_ids)
        embeds = self.embedding(input_ids)
        soft = self.embedding(soft_probs)  # last embedding call of this forward (see the module docstring)
        # Out-of-place scatter keeps autograd happy: gradients reach `soft_probs` (the ID generator), and
        # the replaced hard-token embeddings get none.
        embeds = embeds.index_put((soft_index[:, 0], soft_index[:, 1]), soft.to(embeds.dtype))
        return self.model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    def generate(self, *args, **kwargs):
        return self.model.generate(*args, **kwargs)

    def get_encoder(self):
        return self.model.get_encoder()
