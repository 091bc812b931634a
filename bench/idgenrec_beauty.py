"""`fusionrec bench idgenrec_beauty`: a CPU-budgeted IDGenRec run on the real Amazon Beauty data.

What it does, all in one bench run:

1. Prepares the Beauty corpus once (P5 format; cached in ``$FUSIONREC_BENCH_DIR`` or ``runs/bench``).
2. Trains through the real recipe: ``fusionrec train idgenrec --config idgenrec_beauty_cpu --nproc 2``
   (2 processes, DeepSpeed, the real T5 tokenizer reduced to the corpus' pieces, title IDs, terse
   prompts, length bucketing, bf16). Wall seconds and CPU seconds of the training processes are measured.
3. Evaluates the final checkpoint on a fixed set of test users (the first ``USERS`` of the unshuffled test
   split) with the real trie-constrained beam search (20 beams), and most-popular (counts over the training
   part of every sequence) on the same users: HR@5/10/20, NDCG@5/10/20.
4. Baselines for the step time, measured in the same bench run by short runs of the same recipe: the
   un-optimised settings (full 32k vocabulary, the 10 P5 templates, no bucketing, fp32) and the optimised
   settings in fp32 (what bf16 buys); padding share of batches with/without bucketing and prompt tokens
   of the P5 templates vs the terse one, on the run's tokenizer and ID table.

Lines (``ours`` vs ``baseline``): HR@10 and NDCG@10 vs most-popular (with HR@10 per training CPU-hour);
s/step vs the un-optimised settings and vs fp32; padding share; prompt tokens. ``--quick`` is a smoke run
(a few dozen steps, 200 users) that does not beat anything.

    python -m fusionrec.bench.idgenrec_beauty [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fusionrec.bench import find_shared
from fusionrec.launch.config import load_config

CONFIG = "idgenrec_beauty_cpu"
# The full schedule: ~4,000 steps x 64 samples (~2 epochs) fit ~20 min of training on the shared 2-core box
# (0.25-0.38 s/step measured); FUSIONREC_IDGENREC_BEAUTY_STEPS overrides it (e.g. to fit a time slot).
FULL = {"rec_steps": 4000, "users": 2000, "baseline_steps": 60}
QUICK = {"rec_steps": 30, "users": 200, "baseline_steps": 20}
UNOPTIMISED = [
    "idgenrec.reduce_vocab=false",
    'idgenrec.prompt.style="p5"',
    "idgenrec.data.bucket_window=0",
    'train.deepspeed.precision="fp32"',
]


def _cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _prepare(beauty: Path, out: Path, engine: str = "ray") -> Path:
    """The P5-format corpus once (its manifest marks it done); `engine` = data.shards.engine ("local": no Ray)."""
    if (out / "manifest.json").is_file():
        return out
    cmd = ["prepare", "--input", str(beauty), "--format", "p5", "--out", str(out)]
    cmd.append(f'data.shards.engine="{engine}"')
    # stdout=stderr: a bench's stdout is its JSON lines only
    subprocess.run(
        [sys.executable, "-m", "fusionrec.launch.cli", *cmd], check=True, env=_env(), stdout=sys.stderr
    )
    return out


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _run_overrides(plan: dict[str, int], quick: bool) -> dict[str, list[str]]:
    """The main run (the lr decays linearly to 10% over it) and the two short step-time baselines."""
    steps = plan["rec_steps"]
    main = [f"idgenrec.rec_steps={steps}", f"train.optim.total_steps={steps}", "train.optim.min_lr_ratio=0.1"]
    main += ["train.log_every=10", "train.optim.warmup_steps=5"] if quick else []
    short = [f"idgenrec.rec_steps={plan['baseline_steps']}", f"train.log_every={plan['baseline_steps'] // 3}"]
    return {
        "run": main,
        "unoptimised": short + UNOPTIMISED,
        "fp32": short + ['train.deepspeed.precision="fp32"'],
    }


def _train(run_dir: Path, corpus: Path, tokenizer: Path, extra: list[str]) -> dict[str, Any]:
    """One `fusionrec train` run (fresh run dir); wall/CPU seconds and the trainer's summary."""
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [
        "train",
        "idgenrec",
        "--config",
        CONFIG,
        "--nproc",
        "2",
        *_overrides(run_dir, corpus, tokenizer, extra),
    ]
    cpu0, t0 = _cpu_children(), time.perf_counter()
    subprocess.run([sys.executable, "-m", "fusionrec.launch.cli", *cmd], check=True, env=_env())
    return _summary(run_dir, time.perf_counter() - t0, _cpu_children() - cpu0)


def _overrides(run_dir: Path, corpus: Path, tokenizer: Path, extra: list[str]) -> list[str]:
    return [
        f'train.run_dir="{run_dir}"',
        f'idgenrec.data.corpus="{corpus}"',
        f'idgenrec.pretrained_tokenizer="{tokenizer}"',
        "train.progress=false",
        "idgenrec.data.max_valid_samples=2048",  # the final validation loss: 2,048 users, not all
        *extra,
    ]


def _summary(run_dir: Path, wall: float, cpu: float) -> dict[str, Any]:
    summary = json.loads((run_dir / "train_summary.json").read_text())
    logs = [x for x in summary["logs"] if "throughput/samples_per_s" in x]
    steady = logs[1:] or logs  # the first window holds start-up costs
    sps = sum(x["throughput/samples_per_s"] for x in steady) / len(steady)
    tps = sum(x["throughput/tokens_per_s"] for x in steady) / len(steady)
    val = [x["val/loss"] for x in summary["logs"] if "val/loss" in x]
    return {
        "wall_s": wall, "cpu_s": cpu, "steps": summary["step"], "samples": summary["samples_seen"],
        "tokens": summary["tokens_seen"], "samples_per_s": sps, "tokens_per_s": tps,
        "s_per_step": 64 / sps, "val_loss": val[-1] if val else None,
        "loss": [x["rec/loss"] for x in summary["logs"] if "rec/loss" in x][-1],
        "trie_softmax": load_config(run_dir / "config.toml").idgenrec.trie_softmax,
    }  # fmt: skip


def _test_samples(corpus: Path, n: int) -> list[dict[str, Any]]:
    from fusionrec.data_pipeline.loader import LoaderConfig, ShardDataset

    data = ShardDataset(corpus, LoaderConfig(splits=["test"], shuffle=False, even_batches=False))
    return list(itertools.islice((s for s in data if not s["_pad"]), n))


def _evaluate(run_dir: Path, samples: list[dict[str, Any]]) -> tuple[dict[str, float], float, float]:
    import torch
    from fusionrec.launch.config import load_config
    from fusionrec.trainer.checkpoint import list_checkpoints
    from fusionrec.trainer.recipes.idgenrec.artefacts import evaluate, load_idgenrec_for_eval

    cfg = load_config(run_dir / "config.toml").idgenrec
    model, tokenizer, table, trie = load_idgenrec_for_eval(list_checkpoints(run_dir / "checkpoints")[-1][1])
    torch.set_num_threads(2)
    cpu0, t0 = time.process_time(), time.perf_counter()
    with torch.no_grad():
        sums = evaluate(model, tokenizer, table, trie, samples, cfg.eval, cfg.prompt)
    return sums.to_dict(), time.perf_counter() - t0, time.process_time() - cpu0


def _most_popular(corpus: Path, samples: list[dict[str, Any]], ks: tuple[int, ...]) -> dict[str, float]:
    """cluster.baselines' most-popular (counts over each training part items[:-2], ties by item index), the
    very scorer `fusionrec evaluate` reports, ranked for the bench's users."""
    import numpy as np
    import torch
    from fusionrec.cluster.baselines import MostPopularScorer, fit_most_popular, load_corpus, train_sequences
    from fusionrec.trainer.metrics import MetricSums

    seqs, vocab, _ = load_corpus(corpus / "processed" / "amazon_beauty")
    order = MostPopularScorer(fit_most_popular(train_sequences(seqs, vocab), len(vocab)), max(ks)).order
    index = {vocab[i]: rank for rank, i in enumerate(order)}  # vocab: the corpus keys ("dataset:item")
    ranked = torch.arange(max(ks)).repeat(len(samples), 1)  # everyone gets the same top list
    targets = torch.from_numpy(np.asarray([index[s["target"]] for s in samples], dtype=np.int64))
    return MetricSums.from_topk(ranked, targets, ks).to_dict()


def _padding_and_prompts(run_dir: Path, corpus: Path, batches: int) -> dict[str, float]:
    """Padding share of rank 0's first `batches` training batches, plain vs bucketed (window of the config),
    and mean prompt tokens of the P5 templates vs the terse one, on the run's tokenizer and ID table."""
    import dataclasses

    from fusionrec.data_pipeline.loader import LoaderConfig, ShardDataset, ShardLoader
    from fusionrec.launch.config import load_config
    from fusionrec.trainer.bucketing import BucketedLoader, padding_fraction
    from fusionrec.trainer.idgen.id_table import IDTable
    from fusionrec.trainer.models.tokenizer import load_tokenizer
    from fusionrec.trainer.prompts import PromptBuilder
    from fusionrec.trainer.recipes.idgenrec.data import IDGenRecCollator, id_tokens

    cfg = load_config(run_dir / "config.toml")
    rec, micro = cfg.idgenrec, cfg.train.deepspeed.micro_batch_size
    tok = load_tokenizer(run_dir / "tokenizer")
    table = IDTable.load(sorted((run_dir / "id_tables").glob("r0-*.json"))[0])
    tokens = id_tokens(table, tok)

    def collator(style: str) -> IDGenRecCollator:
        prompt = dataclasses.replace(rec.prompt, style=style, eval_template=0)
        return IDGenRecCollator("rec", tok, PromptBuilder(prompt, table.as_dict()), tokens, table.version)

    def dataset() -> ShardDataset:
        lc = LoaderConfig(seed=rec.data.seed, splits=["train"], batch_size=micro, even_batches=True)
        return ShardDataset(corpus, lc, rank=0, world_size=2)

    out = {}
    for style in ("p5", "terse"):
        col = collator(style)
        plain = list(itertools.islice(ShardLoader(dataset(), col), batches))
        bucketed = list(itertools.islice(BucketedLoader(dataset(), col, col.prompt_cost, 32), batches))
        out[style] = {
            "pad_plain": sum(map(padding_fraction, plain)) / len(plain),
            "pad_bucketed": sum(map(padding_fraction, bucketed)) / len(bucketed),
            "prompt_tokens": sum(int(b["attention_mask"].sum()) for b in plain) / (len(plain) * micro),
        }
    return out


def run(quick: bool = False) -> list[dict]:
    beauty = find_shared("data/amazon_beauty/user_sequence.txt")
    t5 = find_shared("assets/t5-tokenizer/tokenizer.json")
    if beauty is None or t5 is None:
        return [
            {
                "bench": "idgenrec_beauty",
                "skipped": "../shared data/amazon_beauty or assets/t5-tokenizer missing",
            }
        ]
    plan = dict(QUICK if quick else FULL)
    if not quick and os.environ.get("FUSIONREC_IDGENREC_BEAUTY_STEPS"):
        plan["rec_steps"] = int(os.environ["FUSIONREC_IDGENREC_BEAUTY_STEPS"])
    cache = Path(os.environ.get("FUSIONREC_BENCH_DIR", "runs/bench")).resolve() / "idgenrec_beauty"
    runs = _run_overrides(plan, quick)
    for name, extra in runs.items():  # a bad override fails here, before any training
        load_config(CONFIG, _overrides(cache / name, cache / "corpus", t5.parent, extra))
    corpus = _prepare(beauty.parent, cache / "corpus")
    main, base, fp32 = (_train(cache / name, corpus, t5.parent, extra) for name, extra in runs.items())
    samples = _test_samples(corpus, plan["users"])
    ours, eval_s, eval_cpu = _evaluate(cache / "run", samples)
    pop = _most_popular(corpus, samples, (5, 10, 20))
    pad = _padding_and_prompts(cache / "run", corpus, 64 if quick else 400)
    main["epochs"] = main["samples"] / json.loads((corpus / "manifest.json").read_text())["splits"]["train"]
    return _lines(plan, main, base, fp32, ours, pop, pad, eval_s, eval_cpu, quick)


def _lines(plan, main, base, fp32, ours, pop, pad, eval_s, eval_cpu, quick) -> list[dict]:
    cpu_h = main["cpu_s"] / 3600
    ctx = {
        "users": int(ours["count"]), "mode": "quick" if quick else "full", "steps": main["steps"],
        "epochs": round(main["epochs"], 2), "train_wall_s": round(main["wall_s"], 1),
        "train_cpu_s": round(main["cpu_s"], 1), "eval_wall_s": round(eval_s, 1),
        "eval_cpu_s": round(eval_cpu, 1), "load_avg_1m": round(os.getloadavg()[0], 2),
        "final_train_loss": round(main["loss"], 4), "val_loss": main["val_loss"] and round(main["val_loss"], 4),
        "metrics": {k: round(v, 4) for k, v in ours.items() if "@" in k},
        "most_popular_metrics": {k: round(v, 4) for k, v in pop.items() if "@" in k},
        "setup": "tiny T5 d128 2+2, reduced T5 vocab, title IDs (no ID phase), terse prompt, bucketing, bf16, "
                 f"2 ranks x 32, trie softmax {main['trie_softmax']}, beam 20 over all 12,101 items, history "
                 "not masked",
    }  # fmt: skip
    speed = {
        "ours_samples_per_s": round(main["samples_per_s"], 1), "ours_tokens_per_s": round(main["tokens_per_s"]),
        "unoptimised_samples_per_s": round(base["samples_per_s"], 1),
        "unoptimised_tokens_per_s": round(base["tokens_per_s"]), "fp32_samples_per_s": round(fp32["samples_per_s"], 1),
        "baseline_steps": plan["baseline_steps"], "load_avg_1m": ctx["load_avg_1m"],
    }  # fmt: skip
    lines = []
    for metric in ("HR@10", "NDCG@10"):
        a, b = ours[metric], pop[metric]
        extra = (
            {"hr10_per_cpu_hour": round(a / cpu_h, 4), "cpu_hours": round(cpu_h, 3)}
            if metric == "HR@10"
            else {}
        )
        lines.append({
            "bench": f"idgenrec_beauty_{metric.lower().replace('@', '')}", "ours": round(a, 4), "baseline": round(b, 4),
            "ratio": round(a / b, 3) if b else None, "unit": f"{metric} (baseline: most-popular, same users)",
            **extra, **ctx,
        })  # fmt: skip
    for name, other, what in (("unoptimised", base, "full vocab, P5 templates, no bucketing, fp32"),
                              ("fp32", fp32, "same settings in fp32")):  # fmt: skip
        lines.append({
            "bench": f"idgenrec_beauty_step_vs_{name}", "ours": round(main["s_per_step"], 4),
            "baseline": round(other["s_per_step"], 4), "ratio": round(main["s_per_step"] / other["s_per_step"], 3),
            "unit": f"s/step, 64 samples (baseline: {what})", **speed,
        })  # fmt: skip
    style = "terse"
    lines.append({
        "bench": "idgenrec_beauty_padding", "ours": round(pad[style]["pad_bucketed"], 4),
        "baseline": round(pad[style]["pad_plain"], 4),
        "ratio": round(pad[style]["pad_bucketed"] / pad[style]["pad_plain"], 3),
        "unit": "padding share of encoder input (baseline: no bucketing)", "p5": pad["p5"],
    })  # fmt: skip
    lines.append({
        "bench": "idgenrec_beauty_prompt_tokens", "ours": round(pad["terse"]["prompt_tokens"], 1),
        "baseline": round(pad["p5"]["prompt_tokens"], 1),
        "ratio": round(pad["terse"]["prompt_tokens"] / pad["p5"]["prompt_tokens"], 3),
        "unit": "prompt tokens per sample (baseline: the 10 P5 templates)",
    })  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: a few dozen steps, 200 users")
    for line in run(quick=parser.parse_args().quick):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
