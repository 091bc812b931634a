"""`fusionrec bench train`: the DeepSpeed engine (2 processes, ZeRO-0/1/2/3) vs plain torch loops.

Model: the tiny T5 of ``ToySeq2SeqModule`` (2+2 layers, vocab 64) on the reversal task, AdamW, fp32,
gradient clipping 1.0, warmup schedule, one thread per process, micro-batch 16, at two sizes:

* ``tiny``: d_model 64, 16 tokens (~30 ms/step here): fixed per-step costs dominate, the worst case.
* ``d256``: d_model 256, 64 tokens: a step long enough that fixed costs are a realistic share.

Ours is the full engine: the Trainer loop (one agreement all-reduce per micro-batch, overlapped with the
forward for ZeRO 0-2; global-mean logging every 10 steps; token counting), DeepSpeed forward/backward/step.
Two baselines run inside the same 2-process job, interleaved with the engine in chunks of steps (engine
chunk, plain chunk, DDP chunk, ...), so load from other jobs on the machine hits all three alike; each
side's s/step is the median over chunks (the slowest rank's time per chunk):

* plain: each rank trains its own model with a plain loop, no communication (the original baseline: what
  one process does per step on a core shared the same way).
* DDP: ``torch.nn.parallel.DistributedDataParallel`` on the same 2 processes - the fair reference for a
  data-parallel step (gradient all-reduce included, overlapped with backward in buckets).

Lines (``train-`` for tiny, ``train-d256-`` for the larger size):

* ``<p>zero{k}-samples_per_s``: global samples/s of the engine vs ONE plain process (ideal ratio 2).
* ``<p>zero{k}-step_overhead``: engine s/step vs the plain loop's s/step on the same per-rank batch.
* ``<p>zero{k}-vs_ddp-step_overhead``: engine s/step vs DDP s/step (goal for ZeRO-1: ratio <= 1.10).
* ``<p>zero1-tokens_per_s``.

Context per line: CPU seconds per step of each side (rank 0, all threads; insensitive to waiting for a
core), chunk count, load average. ``match`` is omitted: the sides see different data orders.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MICRO, LAYERS, VOCAB = 16, 2, 64
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"d_model": 64, "length": 16},
    "d256": {"d_model": 256, "length": 64},
}
# (steps per chunk, chunks, warm-up steps) per size; --quick keeps every line but few steps.
SCHEDULE = {
    False: {"tiny": (10, 6, 5), "d256": (4, 6, 3)},
    True: {"tiny": (4, 3, 3), "d256": (2, 3, 2)},
}


def _reversal(n: int, length: int, offset: int = 0) -> dict[str, Any]:
    from fusionrec.trainer.recipes.toy.data import make_reversal

    return make_reversal(n, vocab=VOCAB, length=length, seed=offset)


class _Baseline:
    """A plain (or DDP-wrapped) copy of the model with the engine's optimizer, clipping and schedule."""

    def __init__(self, module: Any, length: int, rank: int, ddp: bool) -> None:
        import torch

        model = module.build_model().train()
        if ddp:
            model = torch.nn.parallel.DistributedDataParallel(model)
        self.model = model
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / 10))
        self.data = _reversal(MICRO * 32, length, offset=1 + rank)
        self.i = 0

    def step(self) -> None:
        import torch

        sl = slice((self.i % 32) * MICRO, (self.i % 32 + 1) * MICRO)
        self.i += 1
        loss = self.model(**{k: v[sl] for k, v in self.data.items()}).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)

    def chunk(self, steps: int) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.step()
        return time.perf_counter() - wall, time.process_time() - cpu


def _interleaver(strategy: Any, baselines: dict[str, _Baseline], chunk: int, warmup: int) -> Any:
    """A Trainer callback: after every ``chunk`` engine steps, time one chunk of each baseline."""
    from fusionrec.trainer.callbacks import Callback

    class Interleave(Callback):
        def __init__(self) -> None:
            self.times: dict[str, list[tuple[float, float]]] = {"engine": [], **{k: [] for k in baselines}}
            self.t0 = self.c0 = 0.0

        def on_step_end(self, trainer: Any, phase: Any) -> None:
            step = trainer.state.step
            if step < warmup or (step - warmup) % chunk:
                return
            if step == warmup:
                for b in baselines.values():
                    b.chunk(warmup)
            else:
                self.times["engine"].append((time.perf_counter() - self.t0, time.process_time() - self.c0))
                for name, b in baselines.items():
                    strategy.barrier()
                    self.times[name].append(b.chunk(chunk))
            strategy.barrier()
            self.t0, self.c0 = time.perf_counter(), time.process_time()

    return Interleave()


def _rank(stage: int, size: str, chunk: int, chunks: int, warmup: int, run_dir: str) -> dict[str, Any]:
    """One rank: the real Trainer on a DeepSpeed engine, with the baselines interleaved."""
    from fusionrec.trainer.config import DeepSpeedConfig, OptimConfig, TrainConfig
    from fusionrec.trainer.loop import Trainer
    from fusionrec.trainer.recipes.toy.data import ToyBatches
    from fusionrec.trainer.recipes.toy.module import ToySeq2SeqModule
    from fusionrec.trainer.strategy import DeepspeedStrategy

    dims = SIZES[size]
    ds = DeepSpeedConfig(zero_stage=stage, micro_batch_size=MICRO)
    cfg = TrainConfig(
        run_dir=run_dir,
        max_steps=warmup + chunk * chunks,
        log_every=10,
        tensorboard=False,
        progress=False,
        deepspeed=ds,
        optim=OptimConfig(lr=1e-3, warmup_steps=10),
    )
    cfg.checkpoint.save_at_end = False
    strategy = DeepspeedStrategy(ds)
    strategy.setup()
    module = ToySeq2SeqModule(vocab=VOCAB, d_model=dims["d_model"], layers=LAYERS)
    baselines = {
        "plain": _Baseline(module, dims["length"], strategy.rank, ddp=False),
        "ddp": _Baseline(module, dims["length"], strategy.rank, ddp=True),
    }
    data = _reversal(MICRO * strategy.world_size * cfg.max_steps, dims["length"])
    loader = ToyBatches(data, MICRO, strategy.rank, strategy.world_size)
    clock = _interleaver(strategy, baselines, chunk, warmup)
    state = Trainer(cfg, strategy, module, loader, [clock]).fit()
    per_rank = strategy.all_gather_object(clock.times)
    wall = {k: [max(r[k][i][0] for r in per_rank) / chunk for i in range(chunks)] for k in clock.times}
    return {
        "step_s": {k: statistics.median(v) for k, v in wall.items()},
        "cpu_s": {k: sum(c for _, c in v) / (chunk * chunks) for k, v in clock.times.items()},
        "steps": state.step,
        "world_size": strategy.world_size,
    }


def _line(name: str, ours: float, baseline: float, unit: str, **context: Any) -> dict[str, Any]:
    return {
        "bench": name,
        "ours": round(ours, 4),
        "baseline": round(baseline, 4),
        "ratio": round(ours / baseline, 4),
        "unit": unit,
        **context,
    }


def _stage_lines(stage: int, size: str, r: dict[str, Any], context: dict[str, Any]) -> list[dict[str, Any]]:
    prefix = "train-" if size == "tiny" else f"train-{size}-"
    step, cpu, world = r["step_s"], r["cpu_s"], r["world_size"]
    ctx = {**context, "cpu_s_per_step": {k: round(v, 4) for k, v in cpu.items()}}
    lines = [
        _line(
            f"{prefix}zero{stage}-samples_per_s",
            MICRO * world / step["engine"],
            MICRO / step["plain"],
            "samples/s",
            baseline_is="one plain process",
            **ctx,
        ),
        _line(
            f"{prefix}zero{stage}-step_overhead",
            step["engine"],
            step["plain"],
            "s/step",
            baseline_is="plain loop, no communication",
            **ctx,
        ),
        _line(
            f"{prefix}zero{stage}-vs_ddp-step_overhead",
            step["engine"],
            step["ddp"],
            "s/step",
            baseline_is=f"torch DDP on the same {world} processes",
            **ctx,
        ),
    ]
    if stage == 1:
        tokens = 2 * MICRO * SIZES[size]["length"]  # source + target tokens per rank and step
        lines.append(
            _line(
                f"{prefix}zero1-tokens_per_s",
                tokens * world / step["engine"],
                tokens / step["plain"],
                "tokens/s",
                baseline_is="one plain process",
                **ctx,
            )
        )
    return lines


def run(quick: bool = False) -> list[dict[str, Any]]:
    import tempfile

    from fusionrec.trainer.testing import run_distributed_test

    lines: list[dict[str, Any]] = []
    for size, (chunk, chunks, warmup) in SCHEDULE[quick].items():
        dims = SIZES[size]
        for stage in (0, 1, 2, 3):
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="fusionrec-bench-train-") as run_dir:
                r = run_distributed_test(
                    _rank,
                    world_size=2,
                    timeout_s=1800,
                    stage=stage,
                    size=size,
                    chunk=chunk,
                    chunks=chunks,
                    warmup=warmup,
                    run_dir=run_dir,
                )[0]
            context = {
                "model": f"t5 d{dims['d_model']} {LAYERS}+{LAYERS} layers vocab {VOCAB}",
                "micro_batch": MICRO,
                "tokens": dims["length"],
                "steps_timed": chunk * chunks,
                "chunks": chunks,
                "run_s": round(time.perf_counter() - t0, 1),
                "load_avg": round(os.getloadavg()[0], 2),
            }
            lines.extend(_stage_lines(stage, size, r, context))
    return lines


if __name__ == "__main__":
    import json
    import sys

    for line in run(quick="--quick" in sys.argv):
        print(json.dumps(line), flush=True)
