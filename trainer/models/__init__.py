"""Model builders (architecture only): seq2seq (T5/BART), tokenizers; `causal_lm` holds the decoder LMs."""

from fusionrec.trainer.models.seq2seq import TINY_MODELS, ModelConfig, build_seq2seq
from fusionrec.trainer.models.tokenizer import (
    TokenizerConfig,
    build_tokenizer,
    encode_strict,
    load_tokenizer,
    train_tokenizer,
)

__all__ = [
    "TINY_MODELS",
    "ModelConfig",
    "TokenizerConfig",
    "build_seq2seq",
    "build_tokenizer",
    "encode_strict",
    "load_tokenizer",
    "train_tokenizer",
]
