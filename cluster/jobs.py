"""Entry points for `ray job submit`: `python -m fusionrec.cluster.jobs <command> ...`.

`prepare`, `train`, `evaluate` and `zeroshot` are thin wrappers around the `fusionrec` CLI (same flags, the
exit status is passed through) so a job runs exactly what a user runs locally; inside a job RAY_ADDRESS is
set, and `init_ray` joins that cluster instead of starting an embedded one.

`baseline` trains a baseline (most-popular or SASRec) on a prepared/P5 dataset and evaluates it on the
cluster's actors, writing `RUN/eval/<dataset>.json` + `results.md/.csv/.png`: a self-contained job for
smoke-testing a cluster (no checkpoint of the generative model needed).

    ray job submit --address http://127.0.0.1:8265 -- \\
        python -m fusionrec.cluster.jobs baseline --model most_popular --data DIR --out RUN
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

CLI_COMMANDS = ("prepare", "train", "evaluate", "zeroshot")


def cli_command(command: str, args: list[str]) -> list[str]:
    """The `fusionrec <command> ...` argv, run with this interpreter's environment."""
    if command not in CLI_COMMANDS:
        raise ValueError(f"unknown job command {command!r}; expected one of {CLI_COMMANDS}")
    exe = shutil.which("fusionrec", path=str(Path(sys.executable).parent))
    return [exe, command, *args] if exe else [sys.executable, "-m", "fusionrec.launch.cli", command, *args]


def run_baseline(args: argparse.Namespace) -> Path:
    """Fit the baseline on the training split, save its checkpoint, evaluate every test user on actors."""
    from .baselines import (
        MostPopularFactory,
        SASRecFactory,
        SASRecTrainConfig,
        fit_most_popular,
        load_corpus,
        save_most_popular,
        save_sasrec,
        train_sasrec,
        train_sequences,
    )
    from .evaluator import (
        EvalSet,
        EvaluatorConfig,
        evaluate,
        plot_results,
        results_csv,
        results_markdown,
        write_results,
    )

    seqs, items, name = load_corpus(args.data)
    train = train_sequences(seqs, items)
    run = Path(args.out)
    ckpt = run / "checkpoints" / args.model
    if args.model == "most_popular":
        save_most_popular(ckpt, fit_most_popular(train, len(items)), items)
        factory = MostPopularFactory(str(ckpt), top_k=max(args.ks))
    else:
        cfg = SASRecTrainConfig(epochs=args.epochs, loss=args.loss)
        model, _ = train_sasrec(train, len(items), cfg, EvalSet.from_sequences(seqs, "valid", name, items))
        save_sasrec(ckpt, model, items, cfg)
        factory = SASRecFactory(str(ckpt), top_k=max(args.ks))
    data = EvalSet.from_sequences(seqs, "test", name, items)
    ecfg = EvaluatorConfig(
        num_actors=args.actors, unit_size=args.unit_size, ks=tuple(args.ks), progress=False
    )
    result = evaluate(data, factory, ecfg, results_dir=run / "eval" / f"{name}.units")
    path = write_results(run, result, config=vars(args), checkpoint=str(ckpt))
    rows = [{**result.as_dict(), "model": args.model}]
    (run / "eval" / "results.md").write_text(results_markdown(rows))
    (run / "eval" / "results.csv").write_text(results_csv(rows))
    plot_results(rows, run / "eval" / "results.png")
    print(json.dumps({"results": str(path), "users": result.users, **result.metrics}))
    return path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fusionrec.cluster.jobs", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in CLI_COMMANDS:
        sub.add_parser(name, help=f"fusionrec {name} ... (arguments passed through)", add_help=False)
    b = sub.add_parser("baseline", help="train + evaluate a baseline on the cluster's actors")
    b.add_argument("--model", choices=("most_popular", "sasrec"), default="most_popular")
    b.add_argument("--data", required=True, help="sequences.parquet, a processed dataset dir, or a P5 dir")
    b.add_argument("--out", required=True, help="run directory (results in RUN/eval/)")
    b.add_argument("--actors", type=int, default=2)
    b.add_argument("--unit-size", type=int, default=512)
    b.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20])
    b.add_argument("--epochs", type=int, default=30)
    b.add_argument("--loss", choices=("ce", "bce"), default="ce")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in CLI_COMMANDS:
        return subprocess.call(cli_command(argv[0], argv[1:]))
    args = _parser().parse_args(argv)
    try:
        run_baseline(args)
    except (ValueError, FileNotFoundError, RuntimeError, ConnectionError) as err:
        print(f"fusionrec job failed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
