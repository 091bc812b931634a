"""The `fusionrec` command line: one parser, one small function per subcommand.

Heavy libraries (torch, ray, deepspeed) are imported inside the command functions so `fusionrec --help`
stays instant. Every failure the user can fix ends as one line on stderr and exit status 2; anything else
is a crash and keeps its traceback (exit status 1). `FUSIONREC_DEBUG=1` shows the traceback of both.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

# Before anything imports transformers or ray: offline hub (else ~46 s of retries per lookup), no Ray
# auth token that later breaks `ray job submit`, and Ray bound to loopback (see docs/operations.md).
_ENV_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def _benchmarks() -> tuple[str, ...]:
    """Every public module of the bench/ package is a benchmark (`bench/<name>.py` with `run(quick)`),
    listed without importing any of them so that `--help` stays instant."""
    import pkgutil

    import fusionrec.bench

    return tuple(sorted(m.name for m in pkgutil.iter_modules(fusionrec.bench.__path__) if m.name[0] != "_"))


BENCHMARKS = _benchmarks()


def _set_env_defaults() -> None:
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="a.b=v", help="dotted config overrides")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusionrec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write synthetic raw data in the real Amazon-2014 and Yelp formats")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--categories", default=None, help="comma-separated Amazon categories")
    p.add_argument("--users", type=int, default=None, help="users per category")
    p.add_argument("--items", type=int, default=None, help="items per category")
    p.add_argument("--no-yelp", action="store_true")

    p = sub.add_parser("prepare", help="raw datasets -> processed tables + WebDataset shards + manifest")
    p.add_argument("--config", help="TOML config (general form)")
    p.add_argument("--input", help="one raw dataset folder (one-dataset form)")
    p.add_argument("--format", choices=["p5", "amazon2014", "yelp", "movielens"])
    p.add_argument("--name", help="dataset name (one-dataset form; default: folder name)")
    p.add_argument("--out", help="output corpus folder (default: data.out of the config)")
    _add_overrides(p)

    p = sub.add_parser("inspect", help="verify a corpus' hashes and print its statistics")
    p.add_argument("corpus")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("train", help="train a recipe with DeepSpeed (local ranks, or inside any launcher)")
    p.add_argument("recipe", help="idgenrec | genrec | sasrec | palr | dmpo | toy")
    p.add_argument("--config", help="TOML config (a path or a shipped config name)")
    p.add_argument("--nproc", type=int, default=1, help="local ranks to launch (ignored inside a launcher)")
    p.add_argument("--launcher", choices=["torchrun", "deepspeed"], default="torchrun")
    p.add_argument("--ray", action="store_true", help="run the N ranks as Ray Train workers (TorchTrainer)")
    p.add_argument(
        "--ray-address", default=None, help="with --ray: a Ray cluster (default: embedded local Ray)"
    )
    p.add_argument("--gpu", action="store_true", help="with --ray: one GPU per worker")
    p.add_argument("--ray-name", default=None, help="with --ray: Ray Train run name (RUN/ray_train/<name>)")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by deepspeed
    _add_overrides(p)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on Ray actors beside the baselines")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="an IDGenRec or GenRec run dir (its newest complete checkpoint) or RUN/checkpoints/step-N",
    )
    p.add_argument("--data", required=True, help="a prepared corpus (every OUT/processed/* dataset)")
    p.add_argument("--actors", type=int, default=None, help="evaluator actors (default: eval.evaluator)")
    p.add_argument("--config", help="TOML with an [eval] section (optional)")
    _add_overrides(p)

    p = sub.add_parser("zeroshot", help="evaluate a pretrained checkpoint on held-out platforms, no training")
    p.add_argument("--config", help="TOML with a [zeroshot] section")
    p.add_argument("--checkpoint", help="a run dir or RUN/checkpoints/step-N (zeroshot.checkpoint)")
    p.add_argument("--data", help="the Fusion corpus whose OUT/zeroshot/* are evaluated (zeroshot.corpus)")
    _add_overrides(p)

    p = sub.add_parser("demo", help="the whole pipeline on generated data, local Ray + DeepSpeed on CPU")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--nproc", type=int, default=2, help="DeepSpeed ranks for training")
    p.add_argument("--users", type=int, default=None, help="synthetic users per dataset (default: [synth])")
    p.add_argument("--items", type=int, default=None, help="synthetic items per dataset (default: [synth])")
    _add_overrides(p)

    p = sub.add_parser(
        "dmpo-data", help="many-shot DMPO preference files from a prepared dataset's sequences"
    )
    p.add_argument("--data", required=True, help="a prepared corpus' processed/<dataset> folder")
    p.add_argument("--out", required=True)
    p.add_argument("--k", type=int, nargs="+", default=[1, 3, 5], help="negatives per prompt, one file each")
    p.add_argument("--eval-users", type=int, default=1000, help="held-out users (one eval pair each)")
    p.add_argument("--train-users", type=int, default=0, help="training users (0 = all not held out)")
    p.add_argument("--max-history", type=int, default=20)
    p.add_argument("--title-words", type=int, default=0, help="cut titles to N words (0 = full titles)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("export", help="write a checkpoint's models as HF save_pretrained folders")
    p.add_argument("source", nargs="?", metavar="RUN_OR_CHECKPOINT",
                   help="a run dir (its newest checkpoint) or RUN/checkpoints/step-N")  # fmt: skip
    p.add_argument("--checkpoint", help="the same as RUN_OR_CHECKPOINT (older spelling)")
    p.add_argument("--out", required=True)

    p = sub.add_parser("bench", help="run a benchmark; one JSON line per measurement")
    p.add_argument("name", choices=BENCHMARKS)
    p.add_argument("--quick", action="store_true", help="smaller inputs (said so in each line)")
    p.add_argument(
        "--json", action="store_true", help="JSON lines only (the default output is JSON lines too)"
    )
    return parser


def cmd_bench(args: argparse.Namespace) -> int:
    import contextlib
    import importlib

    # Libraries that log to stdout at import time (DeepSpeed's accelerator notice) bind their handlers to
    # the stream current at import: importing under this redirect keeps stdout pure JSON lines.
    with contextlib.redirect_stdout(sys.stderr):
        module = importlib.import_module(f"fusionrec.bench.{args.name}")
        import fusionrec.trainer.strategy  # noqa: F401  (imports DeepSpeed, whose logger binds to stderr)
    for line in module.run(quick=args.quick):
        print(json.dumps(line), flush=True)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from fusionrec.launch.train import main as train_main

    if args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    if args.ray:  # the N ranks as Ray Train (TorchTrainer) workers, locally or on a cluster
        from fusionrec.cluster.ray_train import train_on_ray
        from fusionrec.launch.config import load_config
        from fusionrec.launch.train import recipe_run

        cfg = load_config(args.config, list(args.overrides))
        summary = train_on_ray(recipe_run(args.recipe), cfg, args.nproc, use_gpu=args.gpu,
                               address=args.ray_address, name=args.ray_name)  # fmt: skip
        print(json.dumps(summary), flush=True)  # rank 0's train_summary.json, one line (a job's output)
        return 0
    return train_main(args.recipe, args.config, list(args.overrides), args.nproc, args.launcher)


def _commands() -> dict[str, Callable[[argparse.Namespace], int]]:
    from fusionrec.launch import commands

    table = {name: getattr(commands, f"cmd_{name}") for name in commands.COMMANDS}
    table["bench"] = cmd_bench
    table["train"] = cmd_train
    return table


def main(argv: list[str] | None = None) -> int:
    _set_env_defaults()
    parser = build_parser()
    # Overrides (a.b=v) may come before or after options; argparse only takes trailing positionals, so
    # collect the rest here. Anything else unknown is still an error.
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if e.startswith("-") or "=" not in e]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    try:
        return _commands()[args.command.replace("-", "_")](args)
    except KeyboardInterrupt:
        print("fusionrec: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if not is_user_error(err) or os.environ.get("FUSIONREC_DEBUG"):
            raise  # a crash (inside torch, DeepSpeed, Ray or ours): the traceback, exit status 1
        print(f"fusionrec {args.command}: error: {err}", file=sys.stderr)
        return 2


# What the user can fix (a bad config, bad data, a missing or refused file, an unreachable Ray address)
# by the project's convention: ValueError (ConfigError, DataError, CheckpointError, ... derive from it).
USER_ERRORS = (ValueError, FileNotFoundError, ConnectionError)


def is_user_error(err: BaseException) -> bool:
    """A user error, or a distributed failure (Ray Train) whose every failing rank had a user error."""
    if isinstance(err, USER_ERRORS):
        return True
    cause = getattr(err, "cause", None)  # Ray's task-error wrapper around a worker's own exception
    if isinstance(cause, BaseException) and cause is not err:
        return is_user_error(cause)
    failures = getattr(err, "failures", None)  # RayTrainError: world rank -> the worker's exception
    return isinstance(failures, dict) and bool(failures) and all(map(is_user_error, failures.values()))


if __name__ == "__main__":
    sys.exit(main())
