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

``--fit`` is the optimiser check (FIT): DMPO k=3 for 4 epochs over the same 32 prompts, every prompt's reward
accuracy and margin probed after each epoch (``dmpo_fit_probe`` lines), held-out AUC beside it (``dmpo_fit_auc``).

    python -m fusionrec.bench.dmpo_beauty [--quick] [--fit] [--record F]
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
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
    epochs: int = 1  # DMPO epochs over the same `n_groups` prompts
    # bf16 weights and DeepSpeed bf16 (fp32 master weights): oneDNN runs bf16 matmuls on AMX/AVX512-BF16 CPUs
    # (2.5x the re-ranking speed of fp32 on the 2-core Xeon); every model, base included, is scored in it.
    precision: str = "bf16"


FULL = Plan(n_eval=1000, n_paper=1000, n_sft=256, n_groups=128)
QUICK = Plan(n_eval=24, n_paper=0, n_sft=8, n_groups=8, log_every=1)
KS = (1, 3, 5)
# --fit, the optimiser check: DMPO k=3 over the same 32 training prompts for 4 epochs, every prompt's reward
# accuracy and margin probed before training and after each epoch (paired across epochs), held-out Beauty AUC
# of the result vs SFT. One epoch over 128 prompts (FULL) showed no rise: each window held prompts not yet seen.
FIT = Plan(n_eval=1000, n_paper=0, n_sft=256, n_groups=32, log_every=1, epochs=4)
FIT_QUICK = Plan(n_eval=8, n_paper=0, n_sft=4, n_groups=4, log_every=1, epochs=2)
FIT_KS = (3,)
TITLE_WORDS = 10  # Beauty titles run to 40+ tokens: two candidates + answers must fit max_length with history
PAPER = ("Amazon_Movie", "data_ml_1m")


def preference_files(cache: Path) -> Path:
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


def _train(recipe: Any, run_dir: Path, plan: Plan, probe: Any = None) -> tuple[Any, float, list[dict]]:
    """bench ranker's recipe run; the module, wall seconds and the metrics logged every `log_every` steps."""
    from fusionrec.bench.ranker import train_recipe
    from fusionrec.trainer.callbacks import HistoryCallback

    history = HistoryCallback()
    callbacks = [history, *([probe] if probe is not None else [])]
    module, seconds, _ = train_recipe(recipe, run_dir, plan, plan.log_every, callbacks)
    return module, seconds, history.logs


def _probe_callback() -> Any:
    """A Trainer callback that scores every training group with the policy (eval mode, no dropout) before
    training and after each epoch: per-group reward accuracy (positive's implicit reward above the negatives'
    mean, as the loss's `accuracy`) and margin. The same groups every time, so epochs are paired."""
    from fusionrec.trainer.callbacks import Callback
    from fusionrec.trainer.llm.scoring import score_pairs
    from fusionrec.trainer.recipes.dmpo.loss import dmpo_loss, flatten_groups, split_flat

    class TrainingPromptProbe(Callback):
        def __init__(self) -> None:
            self.epochs: list[dict[str, list[float]]] = []

        def on_fit_start(self, trainer: Any) -> None:
            self._probe(trainer.module)

        def on_epoch_end(self, trainer: Any, phase: Any) -> None:
            self._probe(trainer.module)

        def _probe(self, m: Any) -> None:
            import torch

            totals = score_pairs(
                m.engines["policy"], flatten_groups(m.examples), m.tokenizer.pad_token_id
            ).total
            chosen, rejected = split_flat(totals, m.cfg.dmpo.k)
            ref_c = torch.tensor([g.ref_chosen for g in m.examples])
            ref_r = torch.tensor([g.ref_rejected for g in m.examples])
            out = dmpo_loss(chosen.float(), rejected.float(), ref_c, ref_r, m.cfg.dmpo.beta)
            margin = out.chosen_reward - out.rejected_reward
            self.epochs.append({"accuracy": (margin > 0).float().tolist(), "margin": margin.tolist()})
            self.beta = m.cfg.dmpo.beta

    return TrainingPromptProbe()


def _merged(module: Any) -> Any:
    """The trained policy with its LoRA folded in, in place (the module is scored, then dropped): scoring an
    unmerged adapter ran at half the pairs/s (seven extra small matmuls per layer)."""
    return module.engines["policy"].module.merge_and_unload().eval()


def score_model(model: Any, tok: Any, evals: dict[str, list], plan: Plan) -> dict[str, tuple[Any, float]]:
    """AUC (with per-pair scores) and wall seconds of the model on every eval set."""
    from fusionrec.trainer.recipes.dmpo.loss import evaluate_auc

    out = {}
    for name, records in evals.items():
        t0 = time.perf_counter()
        result = evaluate_auc(model, tok, records, plan.max_length)
        out[name] = (result, time.perf_counter() - t0)
    return out


def eval_sets(files: Path, plan: Plan) -> dict[str, list]:
    from fusionrec.trainer.recipes.dmpo.data import load_dmpo_file

    evals = {"beauty_heldout": load_dmpo_file(files / "rec_amazon_beauty_eval_ranking.json")[: plan.n_eval]}
    paper = find_shared("data/dmpo")
    for name in PAPER if plan.n_paper and paper else ():
        evals[name] = load_dmpo_file(paper / f"rec_{name}_eval_ranking.json")[: plan.n_paper]
    return evals


@dataclass
class Results:
    scores: dict = field(default_factory=dict)  # model -> eval set -> (AUC result, seconds)
    logs: dict = field(default_factory=dict)  # model -> metrics logged during training
    seconds: dict = field(default_factory=dict)  # model -> training wall seconds


def base_model(plan: Plan) -> tuple[Any, Any]:
    """SmolLM2-135M with a LoRA r16 on all linear layers, in the plan's precision; and its tokenizer."""
    from fusionrec.trainer.models.causal_lm import CausalLMConfig, LoRAConfig, load_tokenizer

    lora = LoRAConfig(rank=16, alpha=32, targets="all-linear")
    dtype = "bfloat16" if plan.precision == "bf16" else "float32"
    cfg = CausalLMConfig(name_or_path="smollm2-135m", max_length=plan.max_length, lora=lora, dtype=dtype)
    return cfg, load_tokenizer(cfg)


def train_sft(base_cfg: Any, tok: Any, files: Path, evals: dict, plan: Plan, tmp: Path, res: Results) -> Path:
    """SFT on `n_sft` prompts, scored; returns the merged SFT model's folder (DMPO's start and reference)."""
    from fusionrec.trainer.recipes.dmpo.config import DMPORecipeConfig

    sft = DMPORecipeConfig(stage="sft", sft_file=str(files / "rec_amazon_beauty_sft_ranking.json"),
                           limit=plan.n_sft, model=base_cfg)  # fmt: skip
    module, res.seconds["sft"], res.logs["sft"] = _train(sft, tmp / "sft", plan)
    sft_dir = module.export(tmp / "sft-merged")
    res.scores["sft"] = score_model(_merged(module), tok, evals, plan)
    del module
    gc.collect()
    return sft_dir


def train_dmpo(k: int, base_cfg: Any, sft_dir: Path, tok: Any, files: Path, evals: dict, plan: Plan, tmp: Path,
          res: Results, probe: Any = None, beta: float = 0.1, name: str = "", keep: bool = False) -> Any:  # fmt: skip
    """DMPO with k negatives from the SFT model on `n_groups` prompts for `epochs` epochs at `plan.lr`, scored
    on `evals`; `keep`: return the merged model (else it is dropped)."""
    from fusionrec.trainer.recipes.dmpo.config import DMPOConfig, DMPORecipeConfig

    cfg = DMPORecipeConfig(
        stage="dmpo", dpo_file=str(files / f"rec_amazon_beauty_dpo_ranking_{k}.json"), limit=plan.n_groups,
        model=replace(base_cfg, name_or_path=str(sft_dir)), dmpo=DMPOConfig(k=k, beta=beta), epochs=plan.epochs,
    )  # fmt: skip
    k_plan = replace(plan, micro_batch=max(1, plan.micro_batch // (1 + k)))  # ~4 sequences per batch
    name = name or f"dmpo_k{k}"
    module, res.seconds[name], res.logs[name] = _train(cfg, tmp / name, k_plan, probe)
    model = _merged(module)
    res.scores[name] = score_model(model, tok, evals, plan)
    print(f"[dmpo_beauty] {name}: " + ", ".join(f"{e} {r.auc:.4f}" for e, (r, _) in res.scores[name].items()),
          file=sys.stderr)  # fmt: skip
    del module
    gc.collect()
    return model if keep else None


def cache_dir() -> Path:
    return Path(os.environ.get("FUSIONREC_BENCH_DIR", "runs/bench")).resolve() / "dmpo_beauty"


def run(quick: bool = False, base_only: bool = False) -> list[dict]:
    """The whole comparison; `base_only`: only the base model's held-out AUC and its scoring speed."""
    from fusionrec.trainer.models.causal_lm import build_causal_lm

    if find_shared("data/amazon_beauty/user_sequence.txt") is None:
        return [{"bench": "dmpo_beauty", "skipped": "../shared/data/amazon_beauty not found"}]
    plan = QUICK if quick else FULL
    meta = {"quick": quick, "precision": plan.precision, **provenance()}
    plan = replace(plan, n_paper=0) if base_only else plan  # the 1,000 held-out pairs of one file only
    files = preference_files(cache_dir())
    evals, (base_cfg, tok), res = eval_sets(files, plan), base_model(plan), Results()
    res.scores["base"] = score_model(build_causal_lm(base_cfg), tok, evals, plan)
    gc.collect()
    if base_only:
        return result_lines(res, plan, {**meta, "base_only": True})
    with tempfile.TemporaryDirectory(prefix="dmpo-beauty-") as tmp:
        sft_dir = train_sft(base_cfg, tok, files, evals, plan, Path(tmp), res)
        for k in KS:
            train_dmpo(k, base_cfg, sft_dir, tok, files, evals, plan, Path(tmp), res)
    return result_lines(res, plan, meta)


def run_fit(quick: bool = False) -> list[dict]:
    """The optimiser check: SFT, then DMPO (FIT_KS) for `epochs` epochs over the same prompts, probed."""
    if find_shared("data/amazon_beauty/user_sequence.txt") is None:
        return [{"bench": "dmpo_fit", "skipped": "../shared/data/amazon_beauty not found"}]
    plan = FIT_QUICK if quick else FIT
    meta = {"quick": quick, "precision": plan.precision, "fit": True, **provenance()}
    files = preference_files(cache_dir())
    evals, (base_cfg, tok), res, probes = eval_sets(files, plan), base_model(plan), Results(), {}
    with tempfile.TemporaryDirectory(prefix="dmpo-fit-") as tmp:
        sft_dir = train_sft(base_cfg, tok, files, evals, plan, Path(tmp), res)
        for k in FIT_KS:
            probes[f"dmpo_k{k}"] = _probe_callback()
            train_dmpo(k, base_cfg, sft_dir, tok, files, evals, plan, Path(tmp), res, probes[f"dmpo_k{k}"])
    return result_lines(res, plan, meta, bench="dmpo_fit") + _fit_lines(probes, plan, meta)


def _fit_lines(probes: dict, plan: Plan, meta: dict) -> list[dict]:
    """Per epoch: mean reward accuracy and margin over all training groups with 95% bootstrap intervals over
    groups; the last epoch vs the first, paired on the same groups."""
    import numpy as np
    from fusionrec.cluster.results import BOOTSTRAP_RESAMPLES, bootstrap_mean

    def ci(values) -> list[float]:
        return [round(x, 4) for x in bootstrap_mean(np.asarray(values), 0.95, BOOTSTRAP_RESAMPLES, 0)]

    out = []
    for model, probe in probes.items():
        first, last = probe.epochs[1], probe.epochs[-1]  # epoch 0 is the reference itself: rewards ~0
        per_epoch = [{"epoch": e, "reward_accuracy": round(float(np.mean(p["accuracy"])), 4),
                      "accuracy_ci95": ci(p["accuracy"]), "reward_margin": round(float(np.mean(p["margin"])), 4),
                      "margin_ci95": ci(p["margin"])} for e, p in enumerate(probe.epochs)]  # fmt: skip
        for metric in ("accuracy", "margin"):
            diff = np.asarray(last[metric]) - np.asarray(first[metric])
            out.append({"bench": "dmpo_fit_probe", "model": model, "metric": f"reward_{metric}",
                        "ours": round(float(np.mean(last[metric])), 4), "baseline": round(float(np.mean(first[metric])), 4),
                        "difference": round(float(diff.mean()), 4), "difference_ci95": ci(diff),
                        "unit": f"training-prompt reward {metric} after epoch {len(probe.epochs) - 1} (baseline: after "
                        "epoch 1; interval: of the paired difference over groups; policy in eval mode)",
                        "n_groups": len(diff), "epochs": per_epoch, "beta": probe.beta, "lr": plan.lr, **meta})  # fmt: skip
    return out


def result_lines(res: Results, plan: Plan, meta: dict, bench: str = "dmpo_beauty") -> list[dict]:
    """`{bench}_auc` per model and eval set (paired with the model it starts from) and `{bench}_train` per
    trained model; `bench` names the run (dmpo_fit and dmpo_sweep are runs of their own)."""
    from fusionrec.trainer.recipes.dmpo.loss import auc_interval

    scores, logs, seconds = res.scores, res.logs, res.seconds
    out = []
    for model, per_set in scores.items():
        ref = {"base": None, "sft": "base"}.get(model, "sft")
        for name, (r, eval_s) in per_set.items():
            line = {"bench": f"{bench}_auc", "model": model, "dataset": name, "ours": round(r.auc, 4),
                    "ci95": [round(x, 4) for x in auc_interval(r)], "users": r.n, "pairwise_acc": round(r.pairwise, 4),
                    "truncated_prompts": r.truncated, "eval_pairs_per_s": round(r.n / eval_s, 2),
                    "train_seconds": round(seconds.get(model, 0.0), 1), "unit": "AUC (random 0.5)", **meta}  # fmt: skip
            if ref in scores:  # the fit and sweep runs score no base model
                other = scores[ref][name][0]
                line.update(baseline=round(other.auc, 4), baseline_model=ref, difference=round(r.auc - other.auc, 4),
                            difference_ci95=[round(x, 4) for x in auc_interval(r, other)],
                            unit=f"AUC (baseline: {ref}, same pairs; interval: of the difference)")  # fmt: skip
            out.append(line)
    for model, points in logs.items():
        acc = [(p["step"], p.get("dmpo/reward_accuracy"), p.get("dmpo/reward_margin")) for p in points]
        loss = [(p["step"], next((v for k, v in p.items() if k.endswith("/loss")), None)) for p in points]
        out.append({"bench": f"{bench}_train", "model": model, "steps": points[-1]["step"] if points else 0,
                    "ours": loss[-1][1] if loss else None, "baseline": loss[0][1] if loss else None,
                    "unit": "training loss, last vs first logged window", "reward_accuracy_margin": acc,
                    "loss_curve": loss, "train_seconds": round(seconds[model], 1),
                    "n_prompts": plan.n_sft if model == "sft" else plan.n_groups,
                    "epochs": 1 if model == "sft" else plan.epochs, **meta})  # fmt: skip
    return out


def main() -> None:
    parser = cli_parser(__doc__, "smoke run: 8 prompts per stage, 24 held-out pairs")
    parser.add_argument("--base-only", action="store_true", help="only the base model's AUC and speed")
    parser.add_argument(
        "--fit", action="store_true", help="the optimiser check: DMPO k=3, 4 epochs, 32 prompts"
    )
    args = parser.parse_args()
    lines = run_fit(quick=args.quick) if args.fit else run(quick=args.quick, base_only=args.base_only)
    emit(lines, args.record)


if __name__ == "__main__":
    main()
