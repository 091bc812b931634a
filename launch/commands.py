"""Implementations of the `fusionrec` subcommands (the parser lives in cli.py).

Each `cmd_<name>(args) -> int` reads its arguments, builds the typed config, calls exactly one library
entry point and prints a short human summary. Heavy imports stay inside the functions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from fusionrec.launch.config import dumps_toml, load_config

COMMANDS = ("synth", "prepare", "inspect", "export", "evaluate", "zeroshot", "demo", "dmpo_data")


def cmd_synth(args: argparse.Namespace) -> int:
    from fusionrec.data_pipeline.synth import synth

    kwargs = {"seed": args.seed, "yelp": not args.no_yelp}
    if args.categories:
        kwargs["categories"] = tuple(c.strip() for c in args.categories.split(",") if c.strip())
    if args.users is not None:
        kwargs["users_per_category"] = args.users
    if args.items is not None:
        kwargs["items_per_category"] = args.items
    summary = synth(args.out, **kwargs)
    print(f"wrote synthetic raw data to {summary['out_dir']}")
    for name, info in sorted(summary.get("datasets", {}).items()):
        print(f"  {name}: {json.dumps({k: v for k, v in info.items() if not isinstance(v, dict | list)})}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Both forms: `--config X.toml [a.b=v ...]`, or one dataset via `--input DIR --format F --out OUT`."""
    from fusionrec.data_pipeline.prepare import prepare, prepare_one
    from fusionrec.data_pipeline.shards import format_inspect, inspect

    if args.input or args.format:
        if args.config:
            raise ValueError("prepare: give either --config or --input/--format, not both")
        if not (args.input and args.format and args.out):
            raise ValueError("prepare: the one-dataset form needs --input, --format and --out")
        cfg = load_config(None, list(args.overrides))
        prepare_one(
            args.format, args.input, args.out, name=args.name, base=cfg.data, config_text=dumps_toml(cfg)
        )
        out = Path(args.out)
    elif args.config:
        cfg = load_config(args.config, list(args.overrides))
        out = Path(args.out or cfg.data.out or cfg.corpus_dir())
        prepare(cfg.data, out, config_text=dumps_toml(cfg))
    else:
        raise ValueError("prepare: give --config X.toml, or --input DIR --format F --out OUT")
    print(f"prepared corpus at {out}")
    print(format_inspect(inspect(out), indent="  "))  # re-reads the shards: a self-check of what we wrote
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from fusionrec.data_pipeline.shards import format_inspect, inspect

    report = inspect(args.corpus)
    if args.json:
        json.dump(report, sys.stdout)
        print()
    else:
        from fusionrec.data_pipeline.world_stats import corpus_stats, format_corpus_stats

        print(format_inspect(report))
        print(format_corpus_stats(corpus_stats(args.corpus)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fusionrec.launch.export import export_checkpoint

    if bool(args.source) == bool(args.checkpoint):
        raise ValueError("export: give the run dir or checkpoint once (RUN_OR_CHECKPOINT or --checkpoint)")
    # DeepSpeed's checkpoint consolidation prints progress to stdout: keep stdout to the written paths.
    with contextlib.redirect_stdout(sys.stderr):
        written = export_checkpoint(args.source or args.checkpoint, args.out)
    for name, path in sorted(written.items()):
        print(f"{name}: {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fusionrec.launch.demo import run_demo

    run_demo(args.out, nproc=args.nproc, users=args.users, items=args.items, overrides=list(args.overrides))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fusionrec.cluster.evaluator import results_markdown
    from fusionrec.cluster.generative import evaluate_checkpoint

    cfg = load_config(args.config, list(args.overrides))
    records = evaluate_checkpoint(args.checkpoint, args.data, cfg.section("eval"), num_actors=args.actors)
    print(results_markdown(records))
    return 0


def cmd_zeroshot(args: argparse.Namespace) -> int:
    from fusionrec.cluster.zeroshot import run_zeroshot
    from fusionrec.cluster.zeroshot_tables import zeroshot_markdown

    cfg = load_config(args.config, list(args.overrides))
    zs = cfg.section("zeroshot")
    checkpoint = args.checkpoint or zs.checkpoint
    corpus = args.data or zs.corpus or (str(cfg.corpus_dir()) if cfg.corpus else "")
    if not checkpoint or not corpus:
        raise ValueError(
            "zeroshot: give the checkpoint and corpus (--checkpoint/--data or zeroshot.checkpoint/corpus)"
        )
    records = run_zeroshot(checkpoint, corpus, cfg=zs)
    print(zeroshot_markdown(records))
    return 0


def cmd_dmpo_data(args: argparse.Namespace) -> int:
    from fusionrec.trainer.recipes.dmpo.implicit import ImplicitPromptConfig, build_files

    cfg = ImplicitPromptConfig(k=max(args.k), max_history=args.max_history, eval_users=args.eval_users,
                               train_users=args.train_users, title_words=args.title_words, seed=args.seed)  # fmt: skip
    manifest = build_files(args.data, args.out, cfg, sorted(set(args.k)))
    print(
        f"wrote {manifest['groups']} training prompts and {manifest['eval_pairs']} held-out pairs to {args.out}"
    )
    print(f"  files: {', '.join(manifest['files'].values())}; skipped: {json.dumps(manifest['skipped'])}")
    return 0
