"""`fusionrec bench gpu --suite train`: what DeepSpeed costs over a plain torch loop, on one fixed batch.

The IDGenRec recommender (the recipe's own model builder) at t5-small shape, random weights, the real T5
vocabulary; one fixed batch of real Amazon-Beauty prompts (20-item title-ID histories) and their next items'
title IDs, padded to a fixed source and target length, so that every step does the same work. The same
initial weights are trained by

* ``plain``: a torch loop, fp32 weights under bf16 autocast, torch AdamW (fused on a GPU), clipping at 1.0;
* ``zero1`` / ``zero2``: our DeepspeedStrategy (bf16 weights with fp32 master copies, the same AdamW through
  DeepSpeed, clipping at 1.0), one rank.

Each runs ``warmup`` untimed steps, then ``steps`` timed ones (device-synchronised at both ends): samples/s,
tokens/s (padded tokens counted: the batch's fixed shape), and model FLOPs utilisation = the FLOPs of one
forward + backward (counted by torch's FlopCounterMode on the plain model) x steps/s over the bf16 matmul
rate measured in the same run (an 8192^3 product). On a GPU each loop also counts the host syncs of one step
(``torch.cuda.set_sync_debug_mode("warn")``, an untimed step) and the first and last losses (the first
equal across loops up to bf16 rounding). The overhead line is 1 - zero-k samples/s / plain samples/s.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch
from fusionrec.bench.gpu import SMOKE_SHAPE, T5_SMALL, _timed  # gpu imports this module lazily

PLANS = {
    "gpu": {
        "batch": 256,
        "source_len": 128,
        "target_len": 8,
        "warmup": 5,
        "steps": 30,
        "matmul": 8192,
        "lr": 1e-4,
    },
    "smoke": {
        "batch": 4,
        "source_len": 24,
        "target_len": 6,
        "warmup": 1,
        "steps": 2,
        "matmul": 256,
        "lr": 1e-2,
    },
}  # the smoke's lr makes 3 steps on a tiny model visibly lower its loss


def fixed_batch(beauty: Path, tok: Any, plan: dict) -> dict[str, torch.Tensor]:
    """The first `batch` users' prompts (title IDs of up to 20 history items) and next items' title IDs."""
    from fusionrec.bench.decode import textual_ids

    asins, ids, _ = textual_ids(beauty / "item_plain_text.txt")
    id_of = dict(zip(asins, ids, strict=True))
    prompts, targets = [], []
    for line in (beauty / "user_sequence.txt").read_text(encoding="utf-8").splitlines()[: plan["batch"]]:
        items = line.split()[1:]
        history = " ; ".join(id_of[a] for a in items[:-1][-20:])
        prompts.append(f"User purchase history: {history} . Predict the next item.")
        targets.append(id_of[items[-1]])
    enc = tok(
        prompts, padding="max_length", truncation=True, max_length=plan["source_len"], return_tensors="pt"
    )
    labels = tok(targets, padding="max_length", truncation=True, max_length=plan["target_len"],
                 return_tensors="pt").input_ids  # fmt: skip
    labels[labels == tok.pad_token_id] = -100
    return {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask, "labels": labels}


def matmul_tflops(device: torch.device, n: int) -> float:
    """bf16 n x n x n products per second, as TFLOP/s (3 warm-ups, the mean of 10)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    _products(a, b, 3)
    _, seconds = _timed(device, _products, a, b, 10)
    return 2 * n**3 * 10 / seconds / 1e12


def _products(a: torch.Tensor, b: torch.Tensor, times: int) -> None:
    for _ in range(times):
        a @ b


def step_flops(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> int:
    """FLOPs of one forward + backward of `model` on `batch` (torch's counter: matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, _autocast(device):
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def plain_step(model: torch.nn.Module, device: torch.device, lr: float):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, fused=device.type == "cuda")

    def step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with _autocast(device):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def deepspeed_step(model: torch.nn.Module, stage: int, plan: dict):
    from fusionrec.trainer.config import DeepSpeedConfig, OptimConfig
    from fusionrec.trainer.strategy import DeepspeedStrategy

    strategy = DeepspeedStrategy(
        DeepSpeedConfig(zero_stage=stage, precision="bf16", micro_batch_size=plan["batch"])
    )
    engine = strategy.prepare(model, OptimConfig(lr=plan["lr"], grad_clip=1.0), name=f"zero{stage}")

    def step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = engine(**batch).loss
        strategy.backward(loss, engine)
        strategy.step(engine)
        return loss.detach()

    return step


def measure(step, batch: dict[str, torch.Tensor], plan: dict, device: torch.device) -> dict[str, Any]:
    """Warm-up, a counted step (host syncs, GPU only), then the timed steps."""
    first = float(step(batch))
    for _ in range(plan["warmup"] - 1):
        step(batch)
    syncs = count_host_syncs(step, batch) if device.type == "cuda" else None
    loss, seconds = _timed(device, _steps, step, batch, plan["steps"])
    return {"first_loss": first, "last_loss": float(loss), "steps_per_s": plan["steps"] / seconds,
            "host_syncs_per_step": syncs}  # fmt: skip


def _steps(step, batch: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    """`n` steps on `batch`; the last one's loss."""
    for _ in range(n):
        loss = step(batch)
    return loss


def count_host_syncs(step, batch: dict[str, torch.Tensor]) -> int:
    """Synchronising CUDA calls in one step: torch warns on each under sync debug mode "warn"."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in seen)


def run_train_suite(lines: Any, beauty: Path, tok_dir: Path, plan: dict, device: torch.device) -> None:
    """One line per loop (plain, zero1, zero2), then one overhead line per DeepSpeed stage."""
    from fusionrec.trainer.models import ModelConfig, build_seq2seq, load_tokenizer

    shape = SMOKE_SHAPE if device.type == "cpu" else T5_SMALL
    tok = load_tokenizer(tok_dir)
    batch = {k: v.to(device) for k, v in fixed_batch(beauty, tok, plan).items()}
    initial = build_seq2seq(ModelConfig("tiny-t5", seed=0, dropout=0.0, **shape), tokenizer=tok)
    peak = matmul_tflops(device, plan["matmul"])
    flops = step_flops(copy.deepcopy(initial).to(device), batch, device)
    tokens = plan["batch"] * (plan["source_len"] + plan["target_len"])
    common = {"shape": shape, "batch": plan["batch"], "source_len": plan["source_len"],
              "target_len": plan["target_len"], "steps": plan["steps"], "step_gflop": round(flops / 1e9, 1),
              "matmul_tflops": round(peak, 3)}  # fmt: skip
    results = {}
    for name in ("plain", "zero1", "zero2"):
        model = copy.deepcopy(initial).to(device).train()
        if name == "plain":
            step = plain_step(model, device, plan["lr"])
        else:
            step = deepspeed_step(model, int(name[-1]), plan)
        r = results[name] = measure(step, batch, plan, device)
        sps = r["steps_per_s"]
        lines.add(bench="gpu_train", model=name, ours=round(sps * plan["batch"], 1), unit="samples/s",
                  tokens_per_s=round(sps * tokens), mfu=round(flops * sps / (peak * 1e12), 4),
                  first_loss=round(r["first_loss"], 4), last_loss=round(r["last_loss"], 4),
                  host_syncs_per_step=r["host_syncs_per_step"], **common)  # fmt: skip
        del model, step
    for name in ("zero1", "zero2"):
        ours, base = results[name]["steps_per_s"], results["plain"]["steps_per_s"]
        lines.add(bench="gpu_train_overhead", model=f"{name} vs plain", ours=round(1 - ours / base, 4),
                  baseline=0.0, unit="1 - samples/s of DeepSpeed / of the plain loop (goal <= 0.10)",
                  **common)  # fmt: skip


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16)
