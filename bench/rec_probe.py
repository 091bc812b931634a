"""`fusionrec bench rec_probe`: how fast does the IDGenRec recommender learn? Validation HR@10 over training.

The recipe knobs that decide whether a from-scratch recommender learns at all (lr, prompt history, steps,
batch, width) are measured here, before a recipe changes, on *validation* users only. A plain single-process
loop (no DeepSpeed: the probe is about the model and data, not the engine) runs the production pieces: the
run's tokenizer as a fresh run trains it (`tokenizer_corpus`), title IDs (`title_table`), the prompt builder and
collator, the tiny T5, AdamW with the trainer's warm-up, and the real trie-constrained beam search
(20 beams). Every `--every` steps one JSON line: valid HR@10 with a 95% bootstrap interval over users (`metric_intervals`), and
most-popular on the same users (each dataset's most frequent training targets) as the baseline of the same run.

Default data: the demo world (`[synth]` of launch/configs/demo.toml, generated into the bench cache);
`--corpus` takes any prepared corpus. `--quick`: 200 steps, 200 users (a smoke run).

    python -m fusionrec.bench.rec_probe [--quick] [--lr 1e-3] [--history 1] [--steps 3000] [--record F]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from fusionrec.bench import cli_parser, emit, provenance

FULL = {"steps": 3000, "users": 1000, "every": 1000}
QUICK = {"steps": 200, "users": 200, "every": 100}


def _demo_corpus(cache: Path) -> Path:
    from fusionrec.launch.demo import demo_config, prepare_corpus, synthesize

    cfg = demo_config(cache, [])
    if not (Path(cfg.corpus_dir()) / "manifest.json").is_file():
        synthesize(cfg, cache, None, None)
        prepare_corpus(cfg)
    return Path(cfg.corpus_dir())


def _most_popular_hr10(train: list[dict], valid: list[dict]) -> float:
    """Each dataset's 10 most frequent training targets, scored on that dataset's validation users."""
    counts: dict[str, Counter] = {}
    for s in train:
        counts.setdefault(s.get("dataset", ""), Counter())[s["target"]] += 1
    top = {ds: {item for item, _ in c.most_common(10)} for ds, c in counts.items()}
    return sum(s["target"] in top.get(s.get("dataset", ""), ()) for s in valid) / len(valid)


def _setup(corpus: Path, args: argparse.Namespace, users: int, workdir: Path) -> dict[str, Any]:
    from fusionrec.trainer.models.tokenizer import load_tokenizer, train_tokenizer
    from fusionrec.trainer.recipes.idgenrec.data import (
        all_samples,
        encodable_fn,
        id_tokens,
        load_items,
        title_table,
    )
    from fusionrec.trainer.recipes.idgenrec.tokenizer import tokenizer_corpus

    texts, titles = load_items(corpus)
    tok_dir = workdir / f"tokenizer-{args.vocab}"
    if not (tok_dir / "tokenizer.json").is_file():
        train_tokenizer(tokenizer_corpus(texts), tok_dir, args.vocab)
    tok = load_tokenizer(tok_dir)
    table = title_table(titles, args.title_words, encodable_fn(tok))
    samples = list(all_samples(corpus))
    valid = [s for s in samples if s["split"] == "valid"]
    random.Random(0).shuffle(valid)
    return {"tok": tok, "table": table, "tokens": id_tokens(table, tok), "valid": valid[:users],
            "train": [s for s in samples if s["split"] == "train"]}  # fmt: skip


def _model(args: argparse.Namespace, tok: Any) -> Any:
    from fusionrec.trainer.model_config import ModelConfig
    from fusionrec.trainer.models.seq2seq import build_seq2seq

    cfg = ModelConfig(name_or_path="tiny-t5", d_model=args.d_model, num_layers=2, num_decoder_layers=2,
                      num_heads=4, d_ff=2 * args.d_model, dropout=0.0, seed=0)  # fmt: skip
    return build_seq2seq(cfg, tokenizer=tok)


def _valid_metrics(model: Any, s: dict[str, Any], trie: Any, prompt: Any) -> Any:
    import torch
    from fusionrec.trainer.recipes.idgenrec.artefacts import evaluate
    from fusionrec.trainer.recipes.idgenrec.config import RankingConfig

    model.eval()
    with torch.no_grad():
        sums = evaluate(model, s["tok"], s["table"], trie, s["valid"], RankingConfig(ks=[10], batch_size=64),
                        prompt=prompt, tokens=s["tokens"])  # fmt: skip
    model.train()
    return sums


def probe(
    corpus: Path, args: argparse.Namespace, plan: dict[str, int], workdir: Path, dataset: str
) -> list[dict]:
    import torch
    from fusionrec.cluster.results import metric_intervals
    from fusionrec.trainer.prompts import PromptBuilder, PromptConfig
    from fusionrec.trainer.recipes.idgenrec.artefacts import build_trie
    from fusionrec.trainer.recipes.idgenrec.data import IDGenRecCollator

    torch.manual_seed(0)
    s = _setup(corpus, args, plan["users"], workdir)
    prompt = PromptConfig(style="terse", max_history=args.history)
    collate = IDGenRecCollator(
        "rec", s["tok"], PromptBuilder(prompt, s["table"].as_dict()), s["tokens"], "probe"
    )
    model = _model(args, s["tok"])
    trie = build_trie(
        s["table"], s["tokens"], int(model.config.decoder_start_token_id), s["tok"].eos_token_id
    )
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 100))
    mp, n = _most_popular_hr10(s["train"], s["valid"]), len(s["valid"])
    ctx = {"model": f"lr={args.lr:g} history={args.history} d={args.d_model}", "dataset": dataset,
           "corpus": str(corpus), "lr": args.lr, "history": args.history, "batch": args.batch,
           "d_model": args.d_model, "title_words": args.title_words, "users_split": "valid", **provenance()}  # fmt: skip
    train, rng, lines, losses, seconds, step = list(s["train"]), random.Random(0), [], [], 0.0, 0
    while step < plan["steps"]:
        rng.shuffle(train)
        for i in range(0, len(train) - args.batch + 1, args.batch):
            t0 = time.perf_counter()
            loss = model(**{k: v for k, v in collate(train[i : i + args.batch]).items() if k != "real"}).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step(), sched.step(), opt.zero_grad()
            seconds, step = seconds + time.perf_counter() - t0, step + 1
            losses.append(loss.item())
            if step % plan["every"] == 0 or step == plan["steps"]:
                sums = _valid_metrics(model, s, trie, prompt)
                ci95 = [round(x, 4) for x in metric_intervals(sums, ["HR@10"])["HR@10"]]
                lines.append({"bench": "rec_probe", "ours": round(sums.to_dict()["HR@10"], 4), "ci95": ci95,
                              "baseline": round(mp, 4), "unit": "valid HR@10 (baseline: most-popular, same users)",
                              "users": n, "step": step, "train_minutes": round(seconds / 60, 2),
                              "loss": round(float(np.mean(losses[-100:])), 4), **ctx})  # fmt: skip
                print(json.dumps(lines[-1]), file=sys.stderr, flush=True)  # progress
            if step >= plan["steps"]:
                break
    return lines


def _parser() -> argparse.ArgumentParser:
    p = cli_parser(__doc__, "smoke run: 200 steps, 200 users")
    p.add_argument("--corpus", default="", help="a prepared corpus (default: the demo world)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--history", type=int, default=1, help="prompt history items (the most recent)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--every", type=int, default=None, help="steps between validation lines")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--title-words", type=int, default=3)
    p.add_argument("--vocab", type=int, default=3000, help="the run's own tokenizer size")
    return p


def run(quick: bool = False, argv: list[str] | None = None) -> list[dict]:
    args = _parser().parse_args([*(argv or []), *(["--quick"] if quick else [])])
    plan = dict(QUICK if args.quick else FULL, **({"steps": args.steps} if args.steps else {}))
    plan.update({"every": args.every} if args.every else {})
    workdir = Path(os.environ.get("FUSIONREC_BENCH_DIR", "runs/bench")).resolve() / "rec_probe"
    if args.corpus:
        corpus, dataset = Path(args.corpus).resolve(), Path(args.corpus).name
    else:
        corpus, dataset = _demo_corpus(workdir / "world"), "demo world"
    return probe(corpus, args, plan, workdir, dataset)


def main() -> None:
    argv = sys.argv[1:]
    emit(run(argv=argv), _parser().parse_args(argv).record)


if __name__ == "__main__":
    main()
