"""`fusionrec bench gpu --suite llm`: a 7B-shape LoRA ranker step under ZeRO-3 on one GPU, and its memory.

A randomly initialised decoder of Llama-2-7B's published shape (``memory.PRESETS["llama-2-7b"]``: 32 layers,
hidden 4096, vocab 32,000; no weights exist offline and step cost does not depend on their values) in bf16,
gradient checkpointing, LoRA r16 on every linear layer (palr_7b's adapters), wrapped by our DeepspeedStrategy
at ZeRO-3 on one rank, at palr_7b's micro batch (2) and sequence length (2048). On one fixed batch of random
tokens (every row a 2040-token prompt and an 8-token answer, no padding, so every step does the same work):

* ``dmpo k=3``: the reference log-probs precomputed with the policy at step 0 (the recipe's
  ``reference = "precomputed"``: `precompute_reference`, timed on its own line), then the DMPO loss over
  groups of 1 chosen + 3 rejected answers, 2 groups x 4 rows x 2048 tokens per step; its first loss is ln 2
  (the policy is the reference), a check that the ZeRO-3 forward in training equals the precompute's;
* ``sft``: then the SFT recipes' loss (`sft_loss` over the answers' log-probs) on the groups' prompts and
  chosen answers, micro batch 2 x 2048 tokens, on the same engine.

Per loop: tokens/s (all tokens of the batch, as NeMo counts them), seconds per optimizer step, the first and
last loss, and the peak device memory (``torch.cuda.max_memory_allocated``, reset before each loop) beside
`trainer/llm/memory.lora_estimate`'s prediction for the same shape, rank, targets, rows and length. The
anchor (NVIDIA NeMo's published Llama-2-7B LoRA, 25.2k tokens/s per H100 in FP8) is another GPU, precision
and framework: the line carries it as context, not as a baseline measured here.
"""

from __future__ import annotations

from typing import Any

import torch
from fusionrec.bench.gpu import _timed  # gpu imports this module lazily
from fusionrec.trainer.llm.memory import GIB, PRESETS, DecoderShape, lora_estimate
from fusionrec.trainer.model_config import TARGET_PRESETS

TINY = DecoderShape(vocab=512, hidden=64, intermediate=128, layers=2, heads=4, kv_heads=4)
PLANS = {
    "gpu": {"shape": "llama-2-7b", "micro_batch": 2, "seq_len": 2048, "answer_len": 8, "k": 3,
            "warmup": 1, "steps": 4, "rank": 16, "lr": 1e-4},
    "smoke": {"shape": "tiny", "micro_batch": 2, "seq_len": 48, "answer_len": 4, "k": 3,
              "warmup": 1, "steps": 2, "rank": 4, "lr": 1e-2},
}  # fmt: skip
ALL_LINEAR = TARGET_PRESETS["all-linear"]  # palr_7b's adapters
NEMO_ANCHOR = "NeMo Llama-2-7B LoRA: 25.2k tokens/s per H100, FP8 (published; not measured here)"


def shape_of_plan(plan: dict) -> DecoderShape:
    return TINY if plan["shape"] == "tiny" else PRESETS[plan["shape"]]


def random_decoder(shape: DecoderShape, device: torch.device, rank: int) -> torch.nn.Module:
    """The shape's Llama with random weights by the recipes' own builder (a "tiny" config of this shape), built
    on `device` in bf16, checkpointed, LoRA on all linears."""
    from fusionrec.trainer.model_config import CausalLMConfig, LoRAConfig, TinyLlamaConfig
    from fusionrec.trainer.models.causal_lm import apply_lora, build_causal_lm

    assert not shape.tied, "build_causal_lm builds untied embeddings (as Llama-2's)"
    tiny = TinyLlamaConfig(hidden_size=shape.hidden, num_layers=shape.layers, num_heads=shape.heads,
                           num_kv_heads=shape.kv_heads, intermediate_size=shape.intermediate,
                           max_position_embeddings=4096)  # fmt: skip
    cfg = CausalLMConfig(dtype="bfloat16", gradient_checkpointing=True, max_length=4096, tiny=tiny,
                         lora=LoRAConfig(rank=rank, alpha=2 * rank, dropout=0.0, targets="all-linear"))  # fmt: skip
    with torch.device(device):  # on the GPU: a 7B model never passes through host memory
        model = build_causal_lm(cfg, vocab_size=shape.vocab)
    return apply_lora(model, cfg.lora)


def fixed_groups(plan: dict, vocab: int) -> list[Any]:
    """`micro_batch` DMPO groups of random tokens: one prompt, 1 chosen + k rejected answers each."""
    from fusionrec.trainer.llm.scoring import EncodedPair
    from fusionrec.trainer.recipes.dmpo.loss import EncodedGroup

    g = torch.Generator().manual_seed(0)
    prompt_len, answer_len = plan["seq_len"] - plan["answer_len"], plan["answer_len"]

    def tokens(n: int) -> list[int]:
        return torch.randint(3, vocab, (n,), generator=g).tolist()

    groups = []
    for _ in range(plan["micro_batch"]):
        prompt = tokens(prompt_len)
        answers = [EncodedPair(prompt, tokens(answer_len)) for _ in range(1 + plan["k"])]
        groups.append(EncodedGroup(chosen=answers[0], rejected=answers[1:]))
    return groups


def _on(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def sft_step(strategy: Any, engine: Any, batch: dict[str, torch.Tensor]):
    from fusionrec.trainer.llm.scoring import answer_logprobs, sft_loss

    def step(_: Any) -> torch.Tensor:
        loss = sft_loss(answer_logprobs(engine, batch))
        strategy.backward(loss, engine)
        strategy.step(engine)
        return loss.detach()

    return step


def dmpo_step(strategy: Any, engine: Any, batch: dict[str, torch.Tensor], k: int, beta: float = 0.1):
    from fusionrec.trainer.recipes.dmpo.loss import dmpo_loss, group_logps

    def step(_: Any) -> torch.Tensor:
        chosen, rejected = group_logps(engine, batch, k)
        loss = dmpo_loss(chosen, rejected, batch["ref_chosen"], batch["ref_rejected"], beta).loss
        strategy.backward(loss, engine)
        strategy.step(engine)
        return loss.detach()

    return step


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / GIB, 2) if device.type == "cuda" else None


def run_llm_suite(lines: Any, plan: dict, device: torch.device) -> None:
    """Build once, then one line for the reference precompute and one per loop (sft, dmpo k=3)."""
    from fusionrec.bench._gpu_train import measure
    from fusionrec.trainer.config import DeepSpeedConfig, OptimConfig
    from fusionrec.trainer.recipes.dmpo.loss import collate_groups, flatten_groups, precompute_reference
    from fusionrec.trainer.strategy import DeepspeedStrategy

    shape, k = shape_of_plan(plan), plan["k"]
    _peak_reset(device)
    model, build_s = _timed(device, random_decoder, shape, device, plan["rank"])
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)  # before ZeRO-3 partitions them
    strategy = DeepspeedStrategy(DeepSpeedConfig(zero_stage=3, precision="bf16",
                                                 micro_batch_size=plan["micro_batch"]))  # fmt: skip
    engine, prepare_s = _timed(device, strategy.prepare, model, OptimConfig(lr=plan["lr"], grad_clip=1.0),
                               name="policy")  # fmt: skip
    common = {"shape": plan["shape"], "params": shape.total_params, "lora_rank": plan["rank"],
              "lora_params": shape.lora_params(plan["rank"], ALL_LINEAR), "trained_params": trained, "zero_stage": 3, "gpus": 1,
              "micro_batch": plan["micro_batch"], "seq_len": plan["seq_len"], "steps": plan["steps"],
              "build_s": round(build_s, 1), "prepare_s": round(prepare_s, 1), "build_peak_gib": _peak_gib(device),
              "anchor": NEMO_ANCHOR}  # fmt: skip
    groups = fixed_groups(plan, shape.vocab)
    _peak_reset(device)
    _, ref_s = _timed(device, precompute_reference, engine, groups, 0, batch_size=len(groups) * (1 + k))
    lines.add(bench="gpu_llm", model="dmpo reference precompute", ours=round(ref_s, 2), unit="s",
              rows=len(groups) * (1 + k), peak_gib=_peak_gib(device), **common)  # fmt: skip
    loops = {  # DMPO first: its reference is the policy at step 0, so its first loss is ln 2
        f"dmpo k={k}": (dmpo_step(strategy, engine, _on(collate_groups(groups, 0), device), k),
                        len(flatten_groups(groups))),
        "sft": (sft_step(strategy, engine, _on(collate_pairs_of(groups), device)), plan["micro_batch"]),
    }  # fmt: skip
    for name, (step, rows) in loops.items():
        _peak_reset(device)
        r = measure(step, None, plan, device)
        predicted = lora_estimate(shape, 1, 3, plan["rank"], ALL_LINEAR, rows, plan["seq_len"]).total / GIB
        peak = _peak_gib(device)
        tokens = rows * plan["seq_len"]
        lines.add(bench="gpu_llm", model=name, ours=round(r["steps_per_s"] * tokens, 1), unit="tokens/s",
                  step_s=round(1 / r["steps_per_s"], 3), rows=rows, first_loss=round(r["first_loss"], 4),
                  last_loss=round(r["last_loss"], 4), host_syncs_per_step=r["host_syncs_per_step"],
                  peak_gib=peak, predicted_gib=round(predicted, 2),
                  peak_over_predicted=round(peak / predicted, 3) if peak else None, **common)  # fmt: skip


def collate_pairs_of(groups: list[Any]) -> dict[str, torch.Tensor]:
    """SFT rows: each group's prompt with its chosen answer."""
    from fusionrec.trainer.llm.scoring import collate_pairs

    return collate_pairs([g.chosen for g in groups], 0)
