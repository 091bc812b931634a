"""Per-device memory estimates for the LLM rankers (7B + LoRA under ZeRO-2/3), and a fail-early check.

DeepSpeed may only be imported in `trainer/strategy.py`, so its estimator formulas
(`estimate_zero3_model_states_mem_needs`, `estimate_zero2_model_states_mem_needs`, DeepSpeed 0.19.8) are
reproduced here for FULL fine-tuning and cross-checked in the tests against hand-computed values. They assume
every parameter is trained (18 bytes/param of fp16/bf16 grads + fp32 master + Adam moments). With LoRA only
the adapters carry those 18 bytes; the frozen base costs its bf16 weights (2 bytes/param), partitioned over
GPUs by ZeRO-3 and replicated by ZeRO-2 — `lora_estimate` is that refinement (model states + one gathered
layer + checkpointed activations), the number the 7B configs and `check_fits` use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class DecoderShape:
    """What the memory of a Llama-family decoder depends on (no weights needed)."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    tied: bool = False

    @property
    def layer_params(self) -> int:
        head_dim = self.hidden // self.heads
        attn = self.hidden * self.hidden * 2 + 2 * self.hidden * self.kv_heads * head_dim  # q,o + k,v
        return attn + 3 * self.hidden * self.intermediate + 2 * self.hidden  # + 2 RMSNorm weights

    @property
    def total_params(self) -> int:
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        return embed + self.layers * self.layer_params + self.hidden

    @property
    def largest_layer_params(self) -> int:
        """DeepSpeed's "largest layer": the biggest single module — here the embedding matrix."""
        return max(self.vocab * self.hidden, self.layer_params)

    def lora_params(self, rank: int, targets: tuple[str, ...]) -> int:
        head_dim = self.hidden // self.heads
        kv = self.kv_heads * head_dim
        dims = {
            "q_proj": (self.hidden, self.hidden),
            "k_proj": (self.hidden, kv),
            "v_proj": (self.hidden, kv),
            "o_proj": (self.hidden, self.hidden),
            "gate_proj": (self.hidden, self.intermediate),
            "up_proj": (self.hidden, self.intermediate),
            "down_proj": (self.intermediate, self.hidden),
        }
        return self.layers * sum(rank * (dims[t][0] + dims[t][1]) for t in targets)


# Published shapes of the paper's 7B-class models (config.json of each release).
PRESETS: dict[str, DecoderShape] = {
    "llama-2-7b": DecoderShape(32000, 4096, 11008, 32, 32, 32),
    "mistral-7b": DecoderShape(32000, 4096, 14336, 32, 32, 8),
    "llama-3-8b": DecoderShape(128256, 4096, 14336, 32, 32, 8),
    "smollm2-135m": DecoderShape(49152, 576, 1536, 30, 9, 3, tied=True),
}


def deepspeed_zero3_estimate(
    total_params: int, largest_layer_params: int, gpus_per_node: int, nodes: int = 1, offload: bool = False
) -> tuple[int, int]:
    """(cpu_bytes, gpu_bytes) per DeepSpeed's zero3 estimator (zero_init=True, buffer factor 1.5)."""
    total_gpus = gpus_per_node * nodes
    largest = 4 * largest_layer_params
    if offload:  # params and optimizer offloaded
        return int(total_params * 18 / nodes * 1.5), largest
    return int(largest_layer_params * 4 * gpus_per_node * 1.5), largest + int(18 * total_params / total_gpus)


def deepspeed_zero2_estimate(total_params: int, gpus_per_node: int, nodes: int = 1) -> tuple[int, int]:
    """(cpu_bytes, gpu_bytes) per DeepSpeed's zero2 estimator without offload."""
    total_gpus = gpus_per_node * nodes
    return int(total_params * 4 * gpus_per_node * 1.5), 2 * total_params + int(18 * total_params / total_gpus)


@dataclass(frozen=True)
class MemoryEstimate:
    gpus: int
    weights: int  # frozen bf16 weights on one device
    lora_states: int  # adapters: bf16 param + grads + fp32 master + Adam (18 B/param), partitioned under ZeRO
    gathered_layer: int  # ZeRO-3 all-gathers one layer (the largest) for its forward/backward
    activations: int  # gradient-checkpointed layer inputs + one layer's recompute

    @property
    def total(self) -> int:
        return self.weights + self.lora_states + self.gathered_layer + self.activations


def lora_estimate(
    shape: DecoderShape,
    gpus: int,
    zero_stage: int,
    rank: int = 16,
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj"),
    micro_batch: int = 4,
    seq_len: int = 1024,
) -> MemoryEstimate:
    """Bytes per GPU for LoRA training of `shape` in bf16 with gradient checkpointing."""
    if gpus < 1 or zero_stage not in (2, 3):
        raise ValueError(f"gpus={gpus} must be >= 1 and zero_stage={zero_stage} in (2, 3)")
    shard = gpus if zero_stage == 3 else 1
    lora = shape.lora_params(rank, targets)
    tokens = micro_batch * seq_len
    # checkpointed inputs of every layer + ~16 hidden-size tensors and the attention/MLP intermediates of
    # the one layer being recomputed + fp32 logits of the kept positions (all of them, for SFT).
    acts = 2 * tokens * shape.hidden * shape.layers + 2 * tokens * (
        16 * shape.hidden + 3 * shape.intermediate
    )
    acts += 4 * tokens * shape.vocab
    return MemoryEstimate(
        gpus=gpus,
        weights=2 * shape.total_params // shard,
        lora_states=18 * lora // (gpus if zero_stage >= 2 else 1),
        gathered_layer=2 * shape.largest_layer_params if zero_stage == 3 else 0,
        activations=acts,
    )


def device_memory_bytes(local_ranks: int = 1) -> int:
    """Memory one rank can use: the GPU's total, or this machine's RAM split over its local ranks."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // max(1, local_ranks)


def check_fits(estimate: MemoryEstimate, available: int, what: str) -> None:
    """Raise before training when the estimate exceeds what a device has (with the numbers to act on)."""
    if estimate.total > available:
        raise ValueError(
            f"{what} needs ~{estimate.total / GIB:.1f} GiB per device with {estimate.gpus} device(s) "
            f"(weights {estimate.weights / GIB:.1f}, LoRA states {estimate.lora_states / GIB:.2f}, gathered layer "
            f"{estimate.gathered_layer / GIB:.2f}, activations {estimate.activations / GIB:.1f}) but a device has "
            f"{available / GIB:.1f} GiB: use more GPUs (ZeRO-3 partitions the weights), offload, or a smaller model"
        )


def memory_table(name: str, gpu_counts: tuple[int, ...] = (1, 2, 4, 8), **kw) -> list[dict]:
    """Rows for docs/llm.md: per GPU count, our LoRA estimate and DeepSpeed's full-fine-tuning estimate."""
    shape = PRESETS[name]
    rows = []
    for n in gpu_counts:
        ours = lora_estimate(shape, n, 3, **kw)
        _, ds_full = deepspeed_zero3_estimate(shape.total_params, shape.largest_layer_params, n)
        rows.append(
            {"model": name, "gpus": n, "lora_zero3_gib": ours.total / GIB, "full_ft_zero3_gib": ds_full / GIB}
        )
    return rows


def shape_of(name_or_path: str, tiny=None) -> DecoderShape | None:
    """Shape from a preset name, a local folder's config.json, or a hub id naming a preset; None if unknown."""
    import json
    from pathlib import Path

    if name_or_path == "tiny" and tiny is not None:
        return DecoderShape(
            259, tiny.hidden_size, tiny.intermediate_size, tiny.num_layers, tiny.num_heads, tiny.num_kv_heads
        )
    cfg_file = Path(name_or_path) / "config.json"
    if cfg_file.is_file():
        c = json.loads(cfg_file.read_text())
        return DecoderShape(
            c["vocab_size"],
            c["hidden_size"],
            c["intermediate_size"],
            c["num_hidden_layers"],
            c["num_attention_heads"],
            c.get("num_key_value_heads", c["num_attention_heads"]),
            bool(c.get("tie_word_embeddings", False)),
        )
    key = name_or_path.lower().replace("_", "-")
    return next((shape for preset, shape in PRESETS.items() if preset in key), None)


def check_model_fits(
    cfg, world_size: int, local_ranks: int, zero_stage: int, micro_batch: int
) -> MemoryEstimate | None:
    """Fail before building a model that cannot fit. `cfg` is a CausalLMConfig.

    Our builders materialise the full model on every rank before DeepSpeed partitions it (no zero.Init), so
    the construction peak is the whole model in `cfg.dtype` per rank; after that ZeRO-3 holds 1/world of it.
    """
    shape = shape_of(cfg.name_or_path, cfg.tiny)
    if shape is None:
        return None  # unknown architecture: nothing to check against (documented)
    targets = cfg.lora.targets
    from fusionrec.trainer.models.causal_lm import TARGET_PRESETS

    targets = tuple(TARGET_PRESETS[targets]) if isinstance(targets, str) else tuple(targets)
    est = lora_estimate(
        shape, world_size, 3 if zero_stage == 3 else 2, cfg.lora.rank, targets, micro_batch, cfg.max_length
    )
    bytes_per_param = 2 if cfg.dtype == "bfloat16" else 4
    construction = MemoryEstimate(
        world_size, bytes_per_param * shape.total_params, est.lora_states, est.gathered_layer, est.activations
    )
    worst = max(est, construction, key=lambda e: e.total)
    check_fits(worst, device_memory_bytes(local_ranks), f"model {cfg.name_or_path!r}")
    return worst
