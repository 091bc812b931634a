"""Implementations of the `fusionrec` subcommands (the parser lives in cli.py).

Each `cmd_<name>(args) -> int` reads its arguments, builds the typed config, calls exactly one library
entry point and prints a short human summary. Heavy imports stay inside the functions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fusionrec.launch.config import Config, dumps_toml, load_config

COMMANDS = ("synth", "prepare", "inspect")


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


def _prepare_config(args: argparse.Namespace) -> tuple[Config, Path]:
    """Both forms of `prepare`: `--config X.toml` or one dataset via `--input/--format`."""
    overrides = list(args.overrides)
    if args.input or args.format:
        if args.config:
            raise ValueError("prepare: give either --config or --input/--format, not both")
        if not (args.input and args.format and args.out):
            raise ValueError("prepare: the one-dataset form needs --input, --format and --out")
        name = args.name or Path(args.input).resolve().name.replace(".", "_").replace(" ", "_")
        spec = f"data.datasets=[{{name={json.dumps(name)}, format={json.dumps(args.format)}, input={json.dumps(str(Path(args.input).resolve()))}}}]"
        overrides.insert(0, spec)
        cfg = load_config(None, overrides)
    elif args.config:
        cfg = load_config(args.config, overrides)
    else:
        raise ValueError("prepare: give --config X.toml, or --input DIR --format F --out OUT")
    out = Path(args.out) if args.out else Path(cfg.train.run_dir) / "corpus"
    return cfg, out


def cmd_prepare(args: argparse.Namespace) -> int:
    from fusionrec.data_pipeline.prepare import prepare
    from fusionrec.data_pipeline.shards import format_inspect

    cfg, out = _prepare_config(args)
    report = prepare(cfg.data, out, config_text=dumps_toml(cfg))
    print(f"prepared corpus at {out}")
    print(
        format_inspect(report, indent="  ") if isinstance(report, dict) and "datasets" in report else report
    )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from fusionrec.data_pipeline.shards import format_inspect, inspect

    report = inspect(args.corpus)
    if args.json:
        json.dump(report, sys.stdout)
        print()
    else:
        print(format_inspect(report))
    return 0
