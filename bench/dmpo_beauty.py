"""`fusionrec bench dmpo_beauty`: does DMPO make a ranker better? Many-shot sets from real Beauty purchases.

The paper's files are few-shot (Movie, ML-1M); here the preference sets come from real Amazon Beauty purchase
sequences (`trainer/recipes/dmpo/implicit.py`, the builder of `fusionrec dmpo-data`): 1,000 held-out users
give one eval pair each (their test item vs a never-bought item), the other users' training prompts hold 5
nested never-bought negatives; titles cut to their first 10 words. Through the real recipe (DMPOModule on a DeepSpeed engine, the generic Trainer,
SmolLM2-135M + LoRA on CPU): base model -> SFT on ``n_sft`` training prompts -> from the merged SFT model, DMPO
with k = 1, 3, 5 on the same ``n_groups`` prompts (reference log-probs precomputed).

Every model is scored by AUC (paper eq. 4) on the held-out Beauty pairs and on the first ``n_paper`` pairs of
each paper eval file, with a 95% bootstrap interval over pairs; each DMPO model is paired with SFT (and SFT
with base) on the same pairs: "better" means the interval of the difference excludes zero. Beside the held-out
figures, the DMPO module's reward accuracy and chosen-minus-rejected margin on the training prompts, logged
every ``log_every`` steps (the optimiser works, whether or not it generalises). Budgets are wall-clock seconds
per stage; evaluation speed is reported as pairs/s.

    python -m fusionrec.bench.dmpo_beauty [--quick] [--record F]
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fusionrec.bench import cli_parser, emit, find_shared, provenance

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass
class Plan:
    n_eval: int  # held-out Beauty pairs (of 1,000)
    n_paper: int  # pairs of each paper eval file (of 1,000)
    n_sft: int
    n_groups: int
    max_length: int = 256
    micro_batch: int = 4
    lr: float = 3e-4
    log_every: int = 4
    # bf16 weights and DeepSpeed bf16 (fp32 master weights): oneDNN runs bf16 matmuls on AMX/AVX512-BF16 CPUs
    # (2.5x the re-ranking speed of fp32 on the 2-core Xeon); every model, base included, is scored in it.
    precision: str = "bf16"


FULL = Plan(n_eval=1000, n_paper=1000, n_sft=256, n_groups=128)
QUICK = Plan(n_eval=24, n_paper=0, n_sft=8, n_groups=8, log_every=1)
KS = (1, 3, 5)
TITLE_WORDS = 10  # Beauty titles run to 40+ tokens: two candidates + answers must fit max_length with history
PAPER = ("Amazon_Movie", "data_ml_1m")


def _files(cache: Path) -> Path:
    """The Beauty preference files, built once from the prepared corpus (prepared once too)."""
    from fusionrec.bench.idgenrec_beauty import _prepare
    from fusionrec.trainer.recipes.dmpo.implicit import ImplicitPromptConfig, build_files

    out = cache / f"files-t{TITLE_WORDS}"
    if not (out / "rec_amazon_beauty_manifest.json").is_file():
        beauty = find_shared("data/amazon_beauty/user_sequence.txt")
        corpus = _prepare(beauty.parent, cache / "corpus")
        cfg = ImplicitPromptConfig(k=max(KS), title_words=TITLE_WORDS)
        build_files(corpus / "processed" / "amazon_beauty", out, cfg, KS)
    return out


def _train(recipe: Any, run_dir: Path, plan: Plan) -> tuple[Any, float, list[dict]]:
    """bench ranker's recipe run; the module, wall seconds and the metrics logged every `log_every` steps."""
    from fusionrec.bench.ranker import train_recipe
    from fusionrec.trainer.callbacks import HistoryCallback

    history = HistoryCallback()
    module, seconds, _ = train_recipe(recipe, run_dir, plan, plan.log_every, [history])
    return module, seconds, history.logs


def _merged(module: Any) -> Any:
    """The trained policy with its LoRA folded in, in place (the module is scored, then dropped): scoring an
    unmerged adapter ran at half the pairs/s (seven extra small matmuls per layer)."""
    return module.engines["policy"].module.merge_and_unload().eval()


def _score(model: Any, tok: Any, evals: dict[str, list], plan: Plan) -> dict[str, tuple[Any, float]]:
    """AUC (with per-pair scores) and wall seconds of the model on every eval set."""
    from fusionrec.trainer.recipes.dmpo.loss import evaluate_auc

    out = {}
    for name, records in evals.items():
        t0 = time.perf_counter()
        result = evaluate_auc(model, tok, records, plan.max_length)
        out[name] = (result, time.perf_counter() - t0)
    return out


def _evals(files: Path, plan: Plan) -> dict[str, list]:
    from fusionrec.trainer.recipes.dmpo.data import load_dmpo_file

    evals = {"beauty_heldout": load_dmpo_file(files / "rec_amazon_beauty_eval_ranking.json")[: plan.n_eval]}
    paper = find_shared("data/dmpo")
    for name in PAPER if plan.n_paper and paper else ():
        evals[name] = load_dmpo_file(paper / f"rec_{name}_eval_ranking.json")[: plan.n_paper]
    return evals


def run(quick: bool = False, base_only: bool = False) -> list[dict]:
    """The whole comparison; `base_only`: only the base model's held-out AUC and its scoring speed."""
    from fusionrec.trainer.models.causal_lm import CausalLMConfig, LoRAConfig, build_causal_lm, load_tokenizer
    from fusionrec.trainer.recipes.dmpo.config import DMPOConfig, DMPORecipeConfig

    if find_shared("data/amazon_beauty/user_sequence.txt") is None:
        return [{"bench": "dmpo_beauty", "skipped": "../shared/data/amazon_beauty not found"}]
    plan = QUICK if quick else FULL
    meta = {"quick": quick, "precision": plan.precision, **provenance()}
    plan = replace(plan, n_paper=0) if base_only else plan  # the 1,000 held-out pairs of one file only
    cache = Path(os.environ.get("FUSIONREC_BENCH_DIR", "runs/bench")).resolve() / "dmpo_beauty"
    files = _files(cache)
    evals = _evals(files, plan)
    lora = LoRAConfig(rank=16, alpha=32, targets="all-linear")
    dtype = "bfloat16" if plan.precision == "bf16" else "float32"
    base_cfg = CausalLMConfig(name_or_path="smollm2-135m", max_length=plan.max_length, lora=lora, dtype=dtype)
    tok = load_tokenizer(base_cfg)
    scores, train_logs, seconds = {"base": _score(build_causal_lm(base_cfg), tok, evals, plan)}, {}, {}
    gc.collect()
    if base_only:
        return _lines(scores, train_logs, seconds, plan, {**meta, "base_only": True})
    with tempfile.TemporaryDirectory(prefix="dmpo-beauty-") as tmp:
        sft = DMPORecipeConfig(stage="sft", sft_file=str(files / "rec_amazon_beauty_sft_ranking.json"),
                               limit=plan.n_sft, model=base_cfg)  # fmt: skip
        module, seconds["sft"], train_logs["sft"] = _train(sft, Path(tmp) / "sft", plan)
        sft_dir = module.export(Path(tmp) / "sft-merged")
        scores["sft"] = _score(_merged(module), tok, evals, plan)
        del module
        gc.collect()
        for k in KS:
            cfg = DMPORecipeConfig(
                stage="dmpo", dpo_file=str(files / f"rec_amazon_beauty_dpo_ranking_{k}.json"), limit=plan.n_groups,
                model=replace(base_cfg, name_or_path=str(sft_dir)),
                dmpo=DMPOConfig(k=k),
            )  # fmt: skip
            k_plan = replace(plan, micro_batch=max(1, plan.micro_batch // (1 + k)))  # ~4 sequences per batch
            module, seconds[f"dmpo_k{k}"], train_logs[f"dmpo_k{k}"] = _train(cfg, Path(tmp) / f"k{k}", k_plan)
            scores[f"dmpo_k{k}"] = _score(_merged(module), tok, evals, plan)
            print(
                f"[dmpo_beauty] k={k}: {scores[f'dmpo_k{k}']['beauty_heldout'][0].auc:.4f}", file=sys.stderr
            )
            del module
            gc.collect()
    return _lines(scores, train_logs, seconds, plan, meta)


def _lines(scores: dict, logs: dict, seconds: dict, plan: Plan, meta: dict) -> list[dict]:
    from fusionrec.trainer.recipes.dmpo.loss import auc_interval

    out = []
    for model, per_set in scores.items():
        ref = {"base": None, "sft": "base"}.get(model, "sft")
        for name, (r, eval_s) in per_set.items():
            line = {"bench": "dmpo_beauty_auc", "model": model, "dataset": name, "ours": round(r.auc, 4),
                    "ci95": [round(x, 4) for x in auc_interval(r)], "users": r.n, "pairwise_acc": round(r.pairwise, 4),
                    "truncated_prompts": r.truncated, "eval_pairs_per_s": round(r.n / eval_s, 2),
                    "train_seconds": round(seconds.get(model, 0.0), 1), "unit": "AUC (random 0.5)", **meta}  # fmt: skip
            if ref is not None:
                other = scores[ref][name][0]
                line.update(baseline=round(other.auc, 4), baseline_model=ref, difference=round(r.auc - other.auc, 4),
                            difference_ci95=[round(x, 4) for x in auc_interval(r, other)],
                            unit=f"AUC (baseline: {ref}, same pairs; interval: of the difference)")  # fmt: skip
            out.append(line)
    for model, points in logs.items():
        acc = [(p["step"], p.get("dmpo/reward_accuracy"), p.get("dmpo/reward_margin")) for p in points]
        loss = [(p["step"], next((v for k, v in p.items() if k.endswith("/loss")), None)) for p in points]
        out.append({"bench": "dmpo_beauty_train", "model": model, "steps": points[-1]["step"] if points else 0,
                    "ours": loss[-1][1] if loss else None, "baseline": loss[0][1] if loss else None,
                    "unit": "training loss, last vs first logged window", "reward_accuracy_margin": acc,
                    "loss_curve": loss, "train_seconds": round(seconds[model], 1),
                    "n_prompts": plan.n_sft if model == "sft" else plan.n_groups, **meta})  # fmt: skip
    return out


def main() -> None:
    parser = cli_parser(__doc__, "smoke run: 8 prompts per stage, 24 held-out pairs")
    parser.add_argument("--base-only", action="store_true", help="only the base model's AUC and speed")
    args = parser.parse_args()
    emit(run(quick=args.quick, base_only=args.base_only), args.record)


if __name__ == "__main__":
    main()
