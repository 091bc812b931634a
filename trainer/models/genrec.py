"""GenRec's model (paper 000, §4.1): BART whose encoder input adds user-ID and item-ID embeddings.

For token ``j`` of the encoder input ``S``::

    X_j = EMB(S_j) + POSEMB(j) + IDEMB(ID(j)),   IDEMB in {UIDEmb, TIDEmb}

``EMB`` is BART's (scaled) token embedding, ``POSEMB`` BART's learned positions (added by BART's encoder,
then its embedding LayerNorm). ``UIDEmb`` and ``TIDEmb`` are two SEPARATE tables: the paper stresses that,
unlike P5's shared whole-word embedding, user and item ID embeddings are not shared. The reference code
looked items up in the user table; here ``user_index`` only ever indexes ``user_id_embed`` and
``item_index`` only ``item_id_embed`` (tests check the gradients land in the right table).

Row 0 of each table is "no ID" (``padding_idx=0``: a zero vector that never trains), so a token without an
ID gets nothing added. The decoder is plain BART: it generates the target item's tokens.

The class subclasses ``BartForConditionalGeneration`` so ``save_pretrained``/``from_pretrained`` work (the
table sizes travel in ``config.genrec_num_users/items``); build one from any BART with :meth:`from_bart`.
Architecture only: no distributed code (DeepSpeed wraps it in ``trainer/strategy.py``).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BartConfig, BartForConditionalGeneration, PreTrainedModel  # noqa: E402
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput  # noqa: E402

ID_TABLES = ("user_id_embed", "item_id_embed")


class GenRecForConditionalGeneration(BartForConditionalGeneration):
    """BART + user/item ID embedding tables added to the encoder's token embeddings."""

    def __init__(self, config: BartConfig) -> None:
        super().__init__(config)
        users, items = _table_sizes(config)
        self.user_id_embed = nn.Embedding(users + 1, config.d_model, padding_idx=0)
        self.item_id_embed = nn.Embedding(items + 1, config.d_model, padding_idx=0)
        # super().__init__ ran post_init before these tables existed: initialise them like BART's
        # embeddings (what _init_weights also does for them when from_pretrained finds them missing).
        for table in (self.user_id_embed, self.item_id_embed):
            nn.init.normal_(table.weight, mean=0.0, std=config.init_std)
            with torch.no_grad():
                table.weight[0].zero_()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_bart(
        cls, bart: PreTrainedModel, num_users: int, num_items: int, seed: int = 0
    ) -> GenRecForConditionalGeneration:
        """Wrap a (pretrained or tiny) BART: same weights, plus fresh ID tables seeded with ``seed``."""
        if not isinstance(bart, BartForConditionalGeneration):
            raise ValueError(f"GenRec is built on BART, got {type(bart).__name__} (use a BART model name)")
        config = BartConfig.from_dict(bart.config.to_dict())
        config.genrec_num_users, config.genrec_num_items = int(num_users), int(num_items)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(config)
        missing, unexpected = model.load_state_dict(bart.state_dict(), strict=False)
        extra = [k for k in missing if not k.startswith(ID_TABLES)]
        if extra or unexpected:
            raise ValueError(f"BART weights do not fit GenRec: missing {extra}, unexpected {unexpected}")
        return model

    @property
    def num_users(self) -> int:
        return self.user_id_embed.num_embeddings - 1

    @property
    def num_items(self) -> int:
        return self.item_id_embed.num_embeddings - 1

    # ------------------------------------------------------------------ embeddings and encoder
    def embed_inputs(
        self, input_ids: torch.Tensor, user_index: torch.Tensor, item_index: torch.Tensor
    ) -> torch.Tensor:
        """EMB(S) + UIDEmb(user_index) + TIDEmb(item_index) for every token; BART adds positions."""
        _check_indices(input_ids, user_index, item_index, self.num_users, self.num_items)
        tokens = self.get_encoder().embed_tokens(input_ids)  # BartScaledWordEmbedding: x embed_scale
        return tokens + self.user_id_embed(user_index) + self.item_id_embed(item_index)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        user_index: torch.Tensor,
        item_index: torch.Tensor,
        return_dict: bool = True,
        **kwargs,
    ) -> BaseModelOutput:
        """The encoder pass with ID embeddings (what beam search runs once per query)."""
        embeds = self.embed_inputs(input_ids, user_index, item_index)
        return self.get_encoder()(inputs_embeds=embeds, attention_mask=attention_mask, return_dict=True)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        user_index: torch.Tensor | None = None,
        item_index: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput:
        """BART's forward; the encoder input is built by :meth:`embed_inputs` unless ``encoder_outputs``
        is given (decoding steps reuse the encoder output)."""
        if inputs_embeds is not None:
            raise ValueError("GenRec builds its own inputs_embeds (token + ID embeddings); pass input_ids")
        if encoder_outputs is None:
            if input_ids is None or user_index is None or item_index is None:
                raise ValueError("GenRec's encoder needs input_ids, user_index and item_index together")
            encoder_outputs = self.encode(input_ids, attention_mask, user_index, item_index)
        return super().forward(attention_mask=attention_mask, encoder_outputs=encoder_outputs, **kwargs)

    def bind(self, user_index: torch.Tensor, item_index: torch.Tensor) -> BoundGenRec:
        """This model with one batch's ID rows bound: the plain seq2seq interface beam search expects."""
        return BoundGenRec(self, user_index, item_index)


class BoundGenRec(nn.Module):
    """``get_encoder()(input_ids=..., attention_mask=...)`` runs GenRec's encoder with bound ID rows.

    The shared decoding code (``trainer/decoding``) calls ``model.get_encoder()`` with token ids only; a
    stateless per-batch view is how the IDs reach it without changing that code or hiding state in the model.
    """

    def __init__(
        self, model: GenRecForConditionalGeneration, user_index: torch.Tensor, item_index: torch.Tensor
    ):
        super().__init__()
        self.model = model
        self.user_index, self.item_index = user_index, item_index

    @property
    def config(self) -> BartConfig:
        return self.model.config

    def get_encoder(self):
        def encoder(input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> BaseModelOutput:
            if input_ids.shape != self.user_index.shape:
                raise ValueError(
                    f"bound ID rows {tuple(self.user_index.shape)} != input {tuple(input_ids.shape)}"
                )
            return self.model.encode(input_ids, attention_mask, self.user_index, self.item_index)

        return encoder

    def forward(self, **kwargs) -> Seq2SeqLMOutput:
        if kwargs.get("encoder_outputs") is None:
            raise ValueError("BoundGenRec only runs decoder steps; encode with get_encoder() first")
        return self.model(**kwargs)


def _table_sizes(config: BartConfig) -> tuple[int, int]:
    users = getattr(config, "genrec_num_users", None)
    items = getattr(config, "genrec_num_items", None)
    if not isinstance(users, int) or not isinstance(items, int) or users < 1 or items < 1:
        raise ValueError(
            f"GenRec config needs genrec_num_users/genrec_num_items >= 1, got {users}/{items} (use from_bart)"
        )
    return users, items


def _check_indices(
    input_ids: torch.Tensor, user_index: torch.Tensor, item_index: torch.Tensor, users: int, items: int
) -> None:
    if user_index.shape != input_ids.shape or item_index.shape != input_ids.shape:
        raise ValueError(
            f"user_index {tuple(user_index.shape)} and item_index {tuple(item_index.shape)} must have the "
            f"shape of input_ids {tuple(input_ids.shape)}"
        )
    for name, index, n in (("user_index", user_index, users), ("item_index", item_index, items)):
        if index.numel() and (int(index.min()) < 0 or int(index.max()) > n):
            raise ValueError(f"{name} values must be in [0, {n}], got {int(index.min())}..{int(index.max())}")
    both = (user_index > 0) & (item_index > 0)
    if both.any():
        b, j = (int(v) for v in torch.nonzero(both)[0])
        raise ValueError(f"token {j} of row {b} has both a user and an item ID (a token belongs to one ID)")
