"""`fusionrec bench train`: DeepSpeed engine (2 processes, ZeRO-0/1/2/3) vs a plain single-process torch loop.

Model: the tiny T5 of ``ToySeq2SeqModule`` (d_model 64, 2+2 layers, vocab 64) on the reversal task,
micro-batch 16 x 16 tokens, AdamW, fp32, one thread per process. Both sides train the same model on the same
kind of batches; ours runs the full engine (Trainer loop, global-mean logging every 10 steps, one agreement
all-reduce per micro-batch, DeepSpeed backward/step with gradient clipping and the warmup schedule).

Lines per ZeRO stage (after warm-up steps, timed over the same number of steps on both sides):
The baseline runs inside the same 2-process job, on both ranks at once just before the engine (so both
sides see the same core contention): each rank trains its own plain model, no communication.
* ``train-zero{k}-samples_per_s``: global samples/s of the 2-process engine vs ONE plain process (whose
  core is shared the same way); the ideal ratio is 2 (two ranks), minus communication and overhead.
* ``train-zero{k}-step_overhead``: seconds per optimizer step of the engine vs the plain loop's step on the
  same per-rank batch; the ratio is the engine's per-step overhead (goal for ZeRO-1: <= 1.10). It includes
  the gradient all-reduce a single process does not need.
Plus ``train-zero1-tokens_per_s``. ``match`` is omitted: the two sides see different data orders.
Numbers are noisy when other jobs share the cores; run once with nothing else running.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MICRO, LENGTH, D_MODEL, LAYERS = 16, 16, 64, 2


def _model_and_data(n: int):
    from fusionrec.trainer.modules.toy import ToySeq2SeqModule, make_reversal

    module = ToySeq2SeqModule(vocab=64, d_model=D_MODEL, layers=LAYERS)
    return module, make_reversal(n, vocab=64, length=LENGTH)


def _plain_loop(steps: int, warmup: int) -> dict[str, float]:
    """The baseline: model(**batch).loss.backward(); clip; AdamW step; lr schedule; zero_grad."""
    import torch

    torch.set_num_threads(1)
    module, data = _model_and_data(MICRO * (steps + warmup))
    model = module.build_model().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    t0 = 0.0
    for step in range(steps + warmup):
        if step == warmup:
            t0 = time.perf_counter()
        sl = slice(step * MICRO, (step + 1) * MICRO)
        loss = model(**{k: v[sl] for k, v in data.items()}).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - t0
    return {"step_s": elapsed / steps, "samples_per_s": steps * MICRO / elapsed}


def _engine_rank(stage: int, steps: int, warmup: int, run_dir: str) -> dict[str, float]:
    """One rank of the DeepSpeed run: the real Trainer, timed between two optimizer steps."""
    from fusionrec.trainer.callbacks import Callback
    from fusionrec.trainer.config import DeepSpeedConfig, OptimConfig, TrainConfig
    from fusionrec.trainer.loop import Trainer
    from fusionrec.trainer.modules.toy import ToyBatches
    from fusionrec.trainer.strategy import DeepspeedStrategy

    class Clock(Callback):
        def __init__(self) -> None:
            self.t0 = self.t1 = 0.0

        def on_step_end(self, trainer, phase) -> None:
            if trainer.state.step == warmup:
                self.t0 = time.perf_counter()
            if trainer.state.step == warmup + steps:
                self.t1 = time.perf_counter()

    ds = DeepSpeedConfig(zero_stage=stage, micro_batch_size=MICRO)
    optim = OptimConfig(lr=1e-3, warmup_steps=10)
    cfg = TrainConfig(
        run_dir=run_dir,
        max_steps=warmup + steps,
        log_every=10,
        tensorboard=False,
        progress=False,
        deepspeed=ds,
        optim=optim,
    )
    cfg.checkpoint.save_at_end = False
    strategy = DeepspeedStrategy(ds)
    strategy.setup()
    # Baseline in the same job: both ranks run the plain loop at the same time (same core contention),
    # then the engine. Interleaving keeps load from other jobs on the machine from biasing one side.
    strategy.barrier()
    plain = _plain_loop(steps, warmup)
    plain_step = strategy.all_reduce(plain["step_s"], op="max").item()
    strategy.barrier()
    module, data = _model_and_data(MICRO * strategy.world_size * (steps + warmup))
    loader = ToyBatches(data, MICRO, strategy.rank, strategy.world_size)
    clock = Clock()
    state = Trainer(cfg, strategy, module, loader, [clock]).fit()
    elapsed = strategy.all_reduce(clock.t1 - clock.t0, op="max").item()
    tokens_per_step = 2 * MICRO * LENGTH * strategy.world_size  # source + target tokens
    return {
        "step_s": elapsed / steps,
        "samples_per_s": steps * MICRO * strategy.world_size / elapsed,
        "tokens_per_s": steps * tokens_per_step / elapsed,
        "steps": state.step,
        "plain_step_s": plain_step,
        "plain_samples_per_s": MICRO / plain_step,
    }


def _line(name: str, ours: float, baseline: float, unit: str) -> dict[str, object]:
    return {
        "bench": name,
        "ours": round(ours, 4),
        "baseline": round(baseline, 4),
        "ratio": round(ours / baseline, 4),
        "unit": unit,
    }


def run(quick: bool = False) -> list[dict[str, object]]:
    import tempfile

    from fusionrec.trainer.testing import run_distributed_test

    steps, warmup = (15, 3) if quick else (60, 5)
    lines: list[dict[str, object]] = []
    for stage in (0, 1, 2, 3):
        with tempfile.TemporaryDirectory(prefix="fusionrec-bench-train-") as run_dir:
            ours = run_distributed_test(
                _engine_rank, world_size=2, stage=stage, steps=steps, warmup=warmup, run_dir=run_dir
            )[0]
        base_sps = ours["plain_samples_per_s"]
        lines.append(_line(f"train-zero{stage}-samples_per_s", ours["samples_per_s"], base_sps, "samples/s"))
        lines.append(
            _line(f"train-zero{stage}-step_overhead", ours["step_s"], ours["plain_step_s"], "s/step")
        )
        if stage == 1:
            lines.append(
                _line("train-zero1-tokens_per_s", ours["tokens_per_s"], base_sps * 2 * LENGTH, "tokens/s")
            )
    return lines


if __name__ == "__main__":
    import json
    import sys

    for line in run(quick="--quick" in sys.argv):
        print(json.dumps(line), flush=True)
