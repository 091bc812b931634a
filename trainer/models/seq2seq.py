"""Encoder-decoder models (ID generator, base recommender, GenRec): architecture only.

A model is named by `ModelConfig.name_or_path`:

- ``"tiny-t5"`` / ``"tiny-bart"``: randomly initialised tiny models built from configs in code (tests, CI,
  the demo) — d_model 128, 2 encoder + 2 decoder layers by default, seeded so two builds are identical;
- anything else: a hub id or a local folder for `AutoModelForSeq2SeqLM.from_pretrained` (real use: `t5-small`,
  `nandakishormpai/t5-small-machine-articles-tag-generation`, `facebook/bart-base`).

No distributed code here: DeepSpeed wraps these models in `trainer/strategy.py`.
"""

from __future__ import annotations

import torch
from fusionrec.trainer.model_config import TINY_MODELS, ModelConfig  # noqa: F401 - the config lives torch-free
from transformers import (  # noqa: E402
    AutoModelForSeq2SeqLM,
    BartConfig,
    BartForConditionalGeneration,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    T5Config,
    T5ForConditionalGeneration,
)


def _tiny_t5(cfg: ModelConfig, vocab_size: int, pad: int, eos: int) -> T5ForConditionalGeneration:
    config = T5Config(
        vocab_size=vocab_size,
        d_model=cfg.d_model,
        d_kv=cfg.d_model // cfg.num_heads,
        d_ff=cfg.d_ff,
        num_layers=cfg.num_layers,
        num_decoder_layers=cfg.num_decoder_layers,
        num_heads=cfg.num_heads,
        dropout_rate=cfg.dropout,
        pad_token_id=pad,
        eos_token_id=eos,
        decoder_start_token_id=pad,  # T5 starts decoding from <pad>
    )
    return T5ForConditionalGeneration(config)


def _tiny_bart(
    cfg: ModelConfig, vocab_size: int, pad: int, eos: int, bos: int
) -> BartForConditionalGeneration:
    config = BartConfig(
        vocab_size=vocab_size,
        d_model=cfg.d_model,
        encoder_layers=cfg.num_layers,
        decoder_layers=cfg.num_decoder_layers,
        encoder_attention_heads=cfg.num_heads,
        decoder_attention_heads=cfg.num_heads,
        encoder_ffn_dim=cfg.d_ff,
        decoder_ffn_dim=cfg.d_ff,
        max_position_embeddings=cfg.max_positions,
        dropout=cfg.dropout,
        pad_token_id=pad,
        eos_token_id=eos,
        bos_token_id=bos,
        decoder_start_token_id=eos,  # BART starts decoding from </s>
        forced_eos_token_id=None,  # no hidden logits processors: our own beam search must equal generate()
        forced_bos_token_id=None,
    )
    return BartForConditionalGeneration(config)


def build_seq2seq(
    cfg: ModelConfig, vocab_size: int | None = None, tokenizer: PreTrainedTokenizerBase | None = None
) -> PreTrainedModel:
    """Build (tiny) or load (hub id / folder) an encoder-decoder model.

    `vocab_size` (or `len(tokenizer)`) sizes a tiny model's embeddings; for a loaded model it resizes the
    embeddings only when the tokenizer is larger than the checkpoint's table. Tiny models are initialised
    under a forked RNG seeded with `cfg.seed`, so building does not disturb the caller's random state.
    """
    if tokenizer is not None:
        vocab_size = vocab_size or len(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer is not None else cfg.pad_token_id
    eos = tokenizer.eos_token_id if tokenizer is not None else cfg.eos_token_id
    if pad is None or eos is None:
        raise ValueError(f"the tokenizer needs pad and eos tokens for a seq2seq model (pad={pad}, eos={eos})")
    if cfg.name_or_path in TINY_MODELS:
        if vocab_size is None or vocab_size <= max(pad, eos):
            raise ValueError(
                f"{cfg.name_or_path} needs vocab_size > special ids, got vocab_size={vocab_size}"
            )
        bos = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            if cfg.name_or_path == "tiny-t5":
                model = _tiny_t5(cfg, vocab_size, pad, eos)
            else:
                model = _tiny_bart(cfg, vocab_size, pad, eos, eos if bos is None else bos)
        return model
    model = AutoModelForSeq2SeqLM.from_pretrained(cfg.name_or_path)
    if vocab_size is not None and vocab_size > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(vocab_size)
    return model
