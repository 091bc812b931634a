"""`fusionrec bench palr_loss_diagnosis`: why PALR's logged fine-tuning loss on Beauty did not fall.

    python -m fusionrec.bench.palr_loss_diagnosis [--quick] [--record docs/results/palr_loss_diagnosis.jsonl]

`bench/palr.py`'s FULL run logged 1.88 at step 5 and 2.12 at step 55. That run trains ONE epoch over 222
examples (111 users x {Recommend, Recommend_Retrieval}), so every logged value is the loss on examples the
model has not seen yet, and each is a mean over 20 examples of two tasks of very different difficulty.
This bench repeats that fine-tuning in-process (PALRModule + Trainer + DeepSpeed ZeRO-0, one CPU rank, 4
examples per step = the FULL run's 2 ranks x 2; same LoRA, lr, warmup, data; co-occurrence negatives instead of
SASRec's, which only changes which 9 items are listed) with `log_every=1`, and measures with adapters off (base)
and on (fine-tuned), per task:
- `seen`: answer-token NLL on the first 40 fine-tuning examples (20 users; trained on once);
- `heldout`: the same on 40 examples of 20 other users, never trained on;
- the noise of a 20-example window mean of the base loss (what one logged value of the FULL run averages).
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

N_EVAL = 40  # examples per evaluation set: 20 users x 2 tasks


def _setup(data_dir: Path, run_dir: Path, max_steps: int):
    from fusionrec.trainer.config import DeepSpeedConfig, OptimConfig, TrainConfig
    from fusionrec.trainer.model_config import CausalLMConfig, LoRAConfig
    from fusionrec.trainer.recipes.palr.config import PALRRecipeConfig
    from fusionrec.trainer.recipes.palr.data import PALRConfig, PALRTaskConfig

    lora = LoRAConfig(rank=16, alpha=32, targets="all-linear")
    palr = PALRConfig(finetune_share=0.005, negatives=9, tasks=PALRTaskConfig(n_targets=1))
    rec = PALRRecipeConfig(data_dir=str(data_dir), retriever="cooccurrence", epochs=1, palr=palr,
                           model=CausalLMConfig(name_or_path="smollm2-135m", max_length=1024, lora=lora))  # fmt: skip
    cfg = TrainConfig(run_dir=str(run_dir), max_steps=max_steps, log_every=1, tensorboard=False, progress=False,
                      deepspeed=DeepSpeedConfig(zero_stage=0, micro_batch_size=4),
                      optim=OptimConfig(lr=1e-3, warmup_steps=5))  # fmt: skip
    cfg.checkpoint.save_at_end = False
    return rec, cfg


def heldout_examples(module, n: int) -> list:
    """Encoded examples of users the fine-tuning did not draw (another seeded draw of users; a user drawn by
    both, recognised by an identical prompt, is dropped)."""
    from dataclasses import replace

    from fusionrec.trainer.recipes.palr.rerank import training_examples

    seen = {tuple(p.prompt_ids) for p in module.examples}
    cfg = replace(module.cfg.palr, seed=module.cfg.palr.seed + 1)
    pairs = module._encode(training_examples(module.sequences, module.text, module.retriever, cfg))
    users = [pairs[i : i + 2] for i in range(0, len(pairs) - 1, 2)]  # (Recommend, Recommend_Retrieval)
    return [p for user in users if not any(tuple(p.prompt_ids) in seen for p in user) for p in user][:n]


def per_task_nll(model, pairs: list, pad_id: int) -> dict[str, float]:
    """Answer-token mean NLL of all pairs and per task (even index: Recommend, odd: Recommend_Retrieval)."""
    from fusionrec.trainer.llm.scoring import score_pairs

    lp = score_pairs(model, pairs, pad_id, batch_size=4)
    out = {}
    for name, rows in (("all", range(len(pairs))), ("recommend", range(0, len(pairs), 2)),
                       ("retrieval", range(1, len(pairs), 2))):  # fmt: skip
        rows = list(rows)
        out[name] = round(float(-lp.total[rows].sum() / lp.count[rows].sum()), 4)
    out["window20_sd"] = _window_sd(lp.total, lp.count)
    return out


def _window_sd(total: torch.Tensor, count: torch.Tensor, size: int = 20, draws: int = 2000) -> float:
    """Standard deviation of the token-mean NLL of `size` random examples: one logged value's noise."""
    rng = random.Random(0)
    means = []
    for _ in range(draws):
        rows = rng.sample(range(len(total)), min(size, len(total)))
        means.append(float(-total[rows].sum() / count[rows].sum()))
    return round(statistics.pstdev(means), 4)


def diagnose(max_steps: int, work: Path) -> dict:
    """Fine-tune as bench/palr.py's FULL run does (one epoch, capped at `max_steps`), then score both sets."""
    from fusionrec.bench import find_shared
    from fusionrec.bench.palr import logged_losses, write_processed
    from fusionrec.trainer.callbacks import HistoryCallback
    from fusionrec.trainer.loop import Trainer
    from fusionrec.trainer.recipes.palr.module import PALRModule
    from fusionrec.trainer.strategy import DeepspeedStrategy

    src = find_shared("data/amazon_beauty/user_sequence.txt")
    if src is None:
        raise FileNotFoundError("../shared/data/amazon_beauty not found")
    write_processed(src.parent, work / "beauty", title_words=6)
    rec, cfg = _setup(work / "beauty", work / "run", max_steps)
    module, history = PALRModule(rec), HistoryCallback()
    t0 = time.perf_counter()
    Trainer(cfg, DeepspeedStrategy(cfg.deepspeed), module, [], callbacks=[history]).fit()
    fit_s = time.perf_counter() - t0
    model, pad = module.engines["ranker"].module, module.tokenizer.pad_token_id
    sets = {"seen": module.examples[:N_EVAL], "heldout": heldout_examples(module, N_EVAL)}
    tuned = {name: per_task_nll(model, pairs, pad) for name, pairs in sets.items()}
    with model.disable_adapter():
        base = {name: per_task_nll(model, pairs, pad) for name, pairs in sets.items()}
    return {"step_losses": logged_losses(history), "tuned": tuned, "base": base, "fit_seconds": round(fit_s, 1),
            "examples": len(module.examples)}  # fmt: skip


def run(quick: bool = False) -> list[dict]:
    from fusionrec.bench import provenance
    from fusionrec.bench.palr import loss_curve

    torch.manual_seed(0)
    steps = 4 if quick else 55
    with tempfile.TemporaryDirectory(prefix="palr-diag-") as tmp:
        try:
            out = diagnose(steps, Path(tmp))
        except FileNotFoundError as err:
            return [{"bench": "palr-loss-diagnosis", "skipped": str(err)}]
    ctx = {"quick": quick, "steps": steps, "examples": out["examples"], "fit_seconds": out["fit_seconds"],
           "step_losses": out["step_losses"], "loss_curve": loss_curve(out["step_losses"], window=5), **provenance()}  # fmt: skip
    lines = []
    for name, what in (("seen", "first 40 fine-tuning examples, trained on once"),
                       ("heldout", "40 examples of 20 users never trained on")):  # fmt: skip
        t, b = out["tuned"][name], out["base"][name]
        lines.append({"bench": f"palr-loss-{name}", "ours": t["all"], "baseline": b["all"],
                      "ratio": round(t["all"] / b["all"], 3), "users": N_EVAL // 2,
                      "unit": f"answer-token mean NLL ({what}); ours: after {steps} steps, baseline: base SmolLM2",
                      "ours_per_task": t, "baseline_per_task": b, **ctx})  # fmt: skip
    return lines


def main() -> None:
    from fusionrec.bench import cli_parser, emit

    parser = cli_parser(__doc__)
    args = parser.parse_args()
    emit(run(args.quick), args.record)


if __name__ == "__main__":
    sys.exit(main())
