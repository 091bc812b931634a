"""`fusionrec bench ranker`: DMPO on the paper's own few-shot files with the real SmolLM2-135M, on CPU.

Stages (each through the real recipe: DMPOModule on a DeepSpeed engine driven by the generic Trainer):
base model → SFT on Amazon_Movie → SFT + DMPO (k = 1 and k = 3, a fresh LoRA on the merged SFT model,
reference log-probs precomputed). Every model is evaluated by AUC of length-normalised candidate likelihood
(paper eq. 4) on Amazon_Movie (in-domain) and data_ml_1m (cross-domain, train Movie → test ML-1M).

Then the speed matrix of `bench/ranker_speed.py` (tokens/s and peak RSS of SFT and DMPO steps, ZeRO-2 vs
ZeRO-3, precomputed vs model reference, tiny Llama and SmolLM2-135M, 2 real ranks per setting); set
FUSIONREC_RANKER_PARTS=speed (or auc) to run one part only.

JSON lines: `dmpo-auc-<train>-<test>-k<k>` (ours = AUC after SFT+DMPO, baseline = AUC after SFT), the base
model's AUC, tokens/s of SFT and DMPO steps, and `shared-prefix-scoring` (our KV-shared candidate scoring vs
re-encoding the prompt per answer, same scores). Paper (Llama-2-7B): Movie TALLRec 57.62, DMPO 66.60.
The evaluation uses the first `n_eval` pairs of each 1,000-pair eval file (stated in every line).
"""

from __future__ import annotations

import gc
import os
import resource
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_CANDIDATES = [os.environ.get("FUSIONREC_SHARED_DIR", ""), "../shared", "/work/shared"]
PAPER = {"Amazon_Movie": {"tallrec": 57.62, "dmpo": 66.60}, "data_ml_1m": {"tallrec": 67.79, "dmpo": 70.20}}


@dataclass
class BenchPlan:
    n_eval: int
    n_sft: int
    n_groups: int
    max_length: int = 224
    micro_batch: int = 4
    lr: float = 3e-4


FULL = BenchPlan(n_eval=100, n_sft=100, n_groups=50)
QUICK = BenchPlan(n_eval=20, n_sft=24, n_groups=12)


def _dmpo_dir() -> Path:
    for cand in SHARED_CANDIDATES:
        if cand and (Path(cand) / "data" / "dmpo").is_dir():
            return Path(cand) / "data" / "dmpo"
    raise FileNotFoundError("../shared/data/dmpo not found; set FUSIONREC_SHARED_DIR")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def train_recipe(
    recipe, run_dir: Path, plan: BenchPlan, log_every: int = 1_000_000, callbacks: list | None = None
) -> tuple[object, float, int]:
    """One recipe run (1 process, ZeRO-0 engine): returns the module, seconds and tokens trained on.

    `plan` needs `micro_batch` and `lr` (and may set `precision`, default fp32); `callbacks` see the metrics
    logged every `log_every` steps."""
    from fusionrec.trainer.config import DeepSpeedConfig, OptimConfig, TrainConfig
    from fusionrec.trainer.loop import Trainer
    from fusionrec.trainer.recipes.dmpo.module import DMPOModule
    from fusionrec.trainer.strategy import DeepspeedStrategy

    cfg = TrainConfig(
        run_dir=str(run_dir),
        max_steps=10_000,
        log_every=log_every,
        tensorboard=False,
        progress=False,
        deepspeed=DeepSpeedConfig(
            zero_stage=0, micro_batch_size=plan.micro_batch, precision=getattr(plan, "precision", "fp32")
        ),
        optim=OptimConfig(lr=plan.lr, warmup_steps=2),
    )
    cfg.checkpoint.save_at_end = False
    module = DMPOModule(recipe)
    strategy = DeepspeedStrategy(cfg.deepspeed)
    trainer = Trainer(cfg, strategy, module, train_loader=[], callbacks=callbacks or [])
    t0 = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - t0
    return module, seconds, recipe.epochs * _tokens(module.examples)


def _tokens(examples) -> int:
    """Tokens per epoch: SFT pairs, or the 1 + k sequences of every DMPO group."""
    from fusionrec.trainer.recipes.dmpo.loss import flatten_groups

    pairs = examples if not hasattr(examples[0], "rejected") else flatten_groups(examples)
    return sum(len(p) for p in pairs)


def _eval(model, tok, records, max_length: int):
    from fusionrec.trainer.recipes.dmpo.loss import evaluate_auc

    return evaluate_auc(model, tok, records, max_length)


PARTS_ENV = "FUSIONREC_RANKER_PARTS"  # e.g. "speed" to run only the speed matrix


def run(quick: bool = False, parts: str | None = None) -> list[dict]:
    """`fusionrec bench ranker`: the AUC benchmark, then the speed matrix (`bench/ranker_speed.py`).

    `parts` (default: env FUSIONREC_RANKER_PARTS, else "auc,speed") selects either or both.
    """
    chosen = {p.strip() for p in (parts or os.environ.get(PARTS_ENV) or "auc,speed").split(",")}
    if not chosen or not chosen <= {"auc", "speed"}:
        raise ValueError(f"{PARTS_ENV}={parts or os.environ.get(PARTS_ENV)!r}: use auc, speed or auc,speed")
    lines: list[dict] = []
    if "auc" in chosen:
        lines += run_auc(quick)
    if "speed" in chosen:
        from fusionrec.bench.ranker_speed import run as run_speed

        lines += run_speed(quick, data_dir=_dmpo_dir())
    return lines


def run_auc(quick: bool = False) -> list[dict]:
    """The DMPO AUC benchmark (see the module docstring); returns its JSON lines."""
    from fusionrec.trainer.models.causal_lm import CausalLMConfig, LoRAConfig, build_causal_lm, load_tokenizer
    from fusionrec.trainer.recipes.dmpo.config import DMPOConfig, DMPORecipeConfig
    from fusionrec.trainer.recipes.dmpo.data import load_dmpo_file

    plan = QUICK if quick else FULL
    data = _dmpo_dir()
    evals = {d: load_dmpo_file(data / f"rec_{d}_eval_ranking.json")[: plan.n_eval] for d in PAPER}
    lora = LoRAConfig(rank=16, alpha=32, targets="all-linear")
    base_cfg = CausalLMConfig(name_or_path="smollm2-135m", max_length=plan.max_length, lora=lora)
    tok = load_tokenizer(base_cfg)
    note = f"first {plan.n_eval} of 1000 eval pairs" + (" (quick)" if quick else "")
    lines: list[dict] = _Lines()
    t_start = time.perf_counter()

    base = build_causal_lm(base_cfg)
    lines.append(_prefix_sharing(base, tok, evals["Amazon_Movie"][: 8 if quick else 24], plan.max_length))
    base_auc = {d: _eval(base, tok, recs, plan.max_length) for d, recs in evals.items()}
    del base
    gc.collect()
    lines += [
        _line(f"dmpo-auc-base-{d}", r.auc, 0.5, "AUC (vs random 0.5)", note, r) for d, r in base_auc.items()
    ]

    with tempfile.TemporaryDirectory(prefix="ranker-bench-") as tmp:
        tmp = Path(tmp)
        sft_file = str(data / "rec_Amazon_Movie_sft_ranking.json")
        sft = DMPORecipeConfig(stage="sft", sft_file=sft_file, limit=plan.n_sft, model=base_cfg)
        module, sft_s, sft_tokens = train_recipe(sft, tmp / "sft", plan)
        sft_dir = module.export(tmp / "sft-merged")
        sft_trunc = module.truncation.as_dict()
        sft_auc = {
            d: _eval(module.engines["policy"].module, tok, recs, plan.max_length) for d, recs in evals.items()
        }
        del module
        gc.collect()
        lines.append(
            _speed("ranker-sft-tokens-per-s", sft_tokens / sft_s, sft_s, "SFT")
            | {"train_truncation": sft_trunc}
        )
        for k in (1, 3):
            cfg = DMPORecipeConfig(
                stage="dmpo",
                dpo_file=str(data / f"rec_Amazon_Movie_dpo_ranking_{k}.json"),
                limit=plan.n_groups,
                model=CausalLMConfig(name_or_path=str(sft_dir), max_length=plan.max_length, lora=lora),
                dmpo=DMPOConfig(k=k),
            )
            # ~4 sequences per micro-batch whatever k is: a group holds 1 + k of them (bounds activation memory)
            dmpo_plan = replace(plan, micro_batch=max(1, plan.micro_batch // (1 + k)))
            module, s, tokens = train_recipe(cfg, tmp / f"dmpo-k{k}", dmpo_plan)
            lines.append(
                _speed(f"ranker-dmpo-k{k}-tokens-per-s", tokens / s, s, f"DMPO k={k}, precomputed ref")
                | {"train_truncation": module.truncation.as_dict()}
            )
            policy = module.engines["policy"].module
            for d, recs in evals.items():
                r = _eval(policy, tok, recs, plan.max_length)
                line = _line(f"dmpo-auc-Amazon_Movie-{d}-k{k}", r.auc, sft_auc[d].auc, "AUC", note, r)
                line.update(sft_pairwise=sft_auc[d].pairwise, base_auc=base_auc[d].auc, paper_x100=PAPER[d])
                lines.append(line)
            del module, policy
            gc.collect()  # free the engine before the next stage loads a model
    lines.append(
        {
            "bench": "ranker-total-seconds",
            "ours": time.perf_counter() - t_start,
            "unit": "s",
            "peak_rss_mb": _peak_rss_mb(),
            "quick": quick,
        }
    )
    return lines


class _Lines(list):
    """The result list; each line is also logged to stderr as soon as it exists (the full run is long)."""

    def append(self, line: dict) -> None:
        import json
        import sys

        print(json.dumps(line), file=sys.stderr, flush=True)
        super().append(line)

    def __iadd__(self, lines):
        for line in lines:
            self.append(line)
        return self


def _prefix_sharing(model, tok, records, max_length: int) -> dict:
    """Scoring both answers of each eval record: shared prompt KV cache (ours) vs re-encoding (baseline)."""
    import torch
    from fusionrec.trainer.llm.scoring import score_candidates, score_pairs
    from fusionrec.trainer.recipes.dmpo.data import TruncationStats, answer, encode_record

    stats, pairs = TruncationStats(), []
    for r in records:
        pairs += [
            encode_record(tok, r, a, max_length, stats) for a in (r.chosen, answer(r.negative, r.positive))
        ]
    t0 = time.perf_counter()
    naive = score_pairs(model, pairs, tok.pad_token_id, batch_size=2).mean
    t_naive = time.perf_counter() - t0
    t0 = time.perf_counter()
    shared = [
        score_candidates(model, a.prompt_ids, [a.answer_ids, b.answer_ids], tok.pad_token_id).mean
        for a, b in zip(pairs[::2], pairs[1::2], strict=True)
    ]
    t_shared = time.perf_counter() - t0
    diff = (naive - torch.cat(shared)).abs().max().item()
    return {
        "bench": "ranker-shared-prefix-scoring",
        "ours": len(records) / t_shared,
        "baseline": len(records) / t_naive,
        "ratio": t_naive / t_shared,
        "unit": "eval pairs/s",
        "match": diff < 1e-3,
        "max_abs_diff": diff,
        "note": "SmolLM2-135M, both orders of each eval record",
    }


def _line(name: str, ours: float, baseline: float, unit: str, note: str, r) -> dict:
    return {
        "bench": name,
        "ours": ours,
        "baseline": baseline,
        "ratio": ours / baseline,
        "unit": unit,
        "pairwise_acc": r.pairwise,
        "n_eval": r.n,
        "truncated_prompts": r.truncated,
        "note": note,
    }


def _speed(name: str, tokens_per_s: float, seconds: float, what: str) -> dict:
    return {
        "bench": name,
        "ours": tokens_per_s,
        "unit": "tokens/s",
        "seconds": seconds,
        "peak_rss_mb": _peak_rss_mb(),
        "note": f"{what}, SmolLM2-135M + LoRA, 1 process ZeRO-0, CPU",
    }


if __name__ == "__main__":
    import json
    import sys

    for line in run(quick="--quick" in sys.argv):
        print(json.dumps(line), flush=True)
