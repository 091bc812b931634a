"""The configs of the architectures in trainer/models/: torch-free, so that recipe config sections (each
recipe's ``config.py``) can hold them and loading a config never imports torch or transformers.

The model files import these (``trainer.models.seq2seq.ModelConfig`` etc. are the same classes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# ---------------------------------------------------------------------- seq2seq (trainer/models/seq2seq.py)
TINY_MODELS = ("tiny-t5", "tiny-bart")


@dataclass
class ModelConfig:
    """Which seq2seq model to build, and the size of the tiny ones.

    The special-token ids default to T5's layout (pad=0, eos=1, decoder start = pad), which is also the
    layout of the project's trained tokenizer; `build_seq2seq(..., tokenizer=tok)` takes them from `tok`.
    """

    name_or_path: str = "tiny-t5"
    d_model: int = 128
    num_layers: int = 2
    num_decoder_layers: int = 2
    num_heads: int = 4
    d_ff: int = 256
    dropout: float = 0.1
    max_positions: int = 512  # BART only (T5 uses relative positions)
    seed: int = 0
    pad_token_id: int = 0
    eos_token_id: int = 1

    def __post_init__(self) -> None:
        if not self.name_or_path:
            raise ValueError("model.name_or_path is empty: use 'tiny-t5', 'tiny-bart', a hub id or a folder")
        for name in ("d_model", "num_layers", "num_decoder_layers", "num_heads", "d_ff", "max_positions"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be > 0, got {getattr(self, name)}")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"model.d_model={self.d_model} must be divisible by model.num_heads={self.num_heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")


# ---------------------------------------------------------------------- tokenizer (trainer/models/tokenizer.py)
# T5's special-token layout: ids 0, 1, 2 in this order (the model configs built in code rely on it).
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, EOS, UNK)


@dataclass
class TokenizerConfig:
    """Where the tokenizer comes from.

    `path` set: load that folder (must hold `tokenizer.json`). `path` empty: train a BPE tokenizer of
    `vocab_size` pieces on the corpus text (the offline default) and save it under `save_dir` if given.
    """

    path: str = ""
    vocab_size: int = 8000
    save_dir: str = ""

    def __post_init__(self) -> None:
        if self.vocab_size < len(SPECIAL_TOKENS) + 32:
            raise ValueError(
                f"tokenizer.vocab_size must be >= {len(SPECIAL_TOKENS) + 32}, got {self.vocab_size}"
            )
        if self.path and not Path(self.path).is_dir():
            raise ValueError(
                f"tokenizer.path={self.path!r} is not a folder (a tokenizer is a folder with tokenizer.json)"
            )


# ---------------------------------------------------------------------- decoder LMs (trainer/models/causal_lm.py)
# Paper defaults (DMPO §5.3: "q, k, v as LoRA targets"); "all-linear" = every projection of the blocks.
TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "all-linear": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
DTYPES = ("float32", "bfloat16")  # names of the torch dtypes a causal LM may be built in


@dataclass
class LoRAConfig:
    """LoRA adapter settings (peft). `targets` is a preset name or an explicit list of module names."""

    enabled: bool = True
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: str | list[str] = "qkv"

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise ValueError(f"lora.rank must be > 0, got {self.rank} (paper searches 8, 16, 32)")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.targets, str) and self.targets not in TARGET_PRESETS:
            raise ValueError(
                f"lora.targets={self.targets!r}: use a preset {sorted(TARGET_PRESETS)} or a list of module names"
            )
        if isinstance(self.targets, list) and not self.targets:
            raise ValueError("lora.targets is an empty list")


@dataclass
class TinyLlamaConfig:
    """A Llama small enough for 2-process ZeRO-3 tests on 2 CPU cores."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 1024

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"tiny.hidden_size={self.hidden_size} not divisible by num_heads={self.num_heads}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"tiny.num_heads={self.num_heads} not divisible by num_kv_heads={self.num_kv_heads}"
            )


@dataclass
class CausalLMConfig:
    """Which decoder LM to load and how to adapt it."""

    name_or_path: str = "tiny"
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    max_length: int = 512  # context window used for prompts (history is truncated to fit, never candidates)
    cache_dir: str = ""  # where converted assets live; "" = ~/.cache/fusionrec
    seed: int = 0
    tiny: TinyLlamaConfig = field(default_factory=TinyLlamaConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype={self.dtype!r}: choose one of {sorted(DTYPES)}")
        if self.max_length < 16:
            raise ValueError(f"model.max_length={self.max_length} is too small for a ranking prompt")
        if not self.name_or_path:
            raise ValueError("model.name_or_path is empty")
