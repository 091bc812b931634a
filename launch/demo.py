"""`fusionrec demo`: the main job on the embedded default, end to end on a 2-core CPU, offline.

    synthesize a world where recommendation is a real task -> prepare the Fusion corpus (Ray Data) -> train
    a tiny IDGenRec with DeepSpeed on 2 CPU processes -> train SASRec baselines -> evaluate on Ray actors
    against most-popular, SASRec and random -> zero-shot on held-out platforms -> a verdict with paired
    intervals, the training curves PNG, and where the TensorBoard logs and tables are.

Each stage is one library call; the demo only chooses sizes and paths (launch/configs/demo.toml).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fusionrec.launch.config import Config, dumps_toml, load_config

DEMO_CONFIG = "demo"


def demo_config(out: Path, overrides: list[str]) -> Config:
    """demo.toml with every path moved under `out` (the TOML's paths assume runs/demo)."""
    out = out.resolve()
    moved = [f"corpus={str(out / 'corpus')!r}", f"train.run_dir={str(out / 'train')!r}"]
    cfg = load_config(DEMO_CONFIG, moved + overrides)
    for spec in cfg.data.datasets:
        spec.input = str(out / "raw")
    return cfg


def _stage(name: str, fn: Callable[[], Any], timings: dict[str, float]) -> Any:
    print(f"\n== {name}", flush=True)
    start = time.perf_counter()
    result = fn()
    timings[name] = time.perf_counter() - start
    print(f"   ({timings[name]:.0f} s)", flush=True)
    return result


def synthesize(cfg: Config, out: Path, users: int | None, items: int | None) -> dict:
    """The [synth] world of the config, for the categories (and Yelp) its datasets read."""
    from fusionrec.data_pipeline.synth import generate

    world = dataclasses.replace(
        cfg.section("synth"),
        seed=cfg.data.seed,
        categories=tuple(s.category for s in cfg.data.datasets if s.category),
        yelp=any(s.format == "yelp" for s in cfg.data.datasets),
    )
    if users is not None:
        world = dataclasses.replace(world, users_per_category=users, yelp_users=users)
    if items is not None:
        world = dataclasses.replace(world, items_per_category=items, yelp_items=items)
    return generate(out / "raw", world)


def prepare_corpus(cfg: Config) -> dict:
    from fusionrec.data_pipeline.prepare import prepare
    from fusionrec.data_pipeline.shards import format_inspect, inspect
    from fusionrec.data_pipeline.world_stats import corpus_stats, format_corpus_stats

    prepare(cfg.data, cfg.corpus_dir(), config_text=dumps_toml(cfg))
    report = inspect(cfg.corpus_dir())
    print(format_inspect(report, indent="   "))
    print(format_corpus_stats(corpus_stats(cfg.corpus_dir()), indent="   "))
    return report


def train(cfg: Config, nproc: int) -> int:
    from fusionrec.launch.train import spawn_local

    code = spawn_local("idgenrec", cfg, nproc, "torchrun")
    if code != 0:
        raise RuntimeError(f"training failed (exit status {code}); see the log above")
    return code


def latest_checkpoint(cfg: Config) -> Path:
    from fusionrec.trainer.checkpoint_reader import resolve_resume

    root = Path(cfg.train.run_dir) / cfg.train.checkpoint.dir
    ckpt = resolve_resume(root, "auto")
    if ckpt is None:
        raise RuntimeError(f"training finished without a checkpoint in {root}")
    return ckpt


def train_sasrec_baselines(cfg: Config, epochs: int, threads: int) -> dict[str, str]:
    """SASRec-CE per pretraining platform on its training split (validation users pick the epoch); the
    checkpoints go to cfg.eval.sasrec so the evaluation scores them beside the generative model."""
    from fusionrec.launch.palr_retriever import train_and_save_sasrec

    out, paths = Path(cfg.train.run_dir) / "baselines", {}
    for name in cfg.data.fusion.pretrain:
        summary = train_and_save_sasrec(
            cfg.corpus_dir() / "processed" / name, out / f"sasrec-{name}", epochs, threads
        )
        paths[name] = str(out / f"sasrec-{name}")
        print(f"   {name}: {summary['epochs']} epochs in {summary['seconds']:.0f} s, "
              f"best valid NDCG@10 {summary['best_valid_ndcg@10']:.4f}")  # fmt: skip
    cfg.eval = dataclasses.replace(cfg.section("eval"), sasrec=paths)
    return paths


def evaluate_models(cfg: Config, ckpt: Path) -> list[dict]:
    """IDGenRec vs most-popular, SASRec and random on every pretraining dataset's test users, on Ray actors."""
    from fusionrec.cluster.evaluator import results_markdown
    from fusionrec.cluster.generative import evaluate_checkpoint

    records = evaluate_checkpoint(ckpt, cfg.corpus_dir(), cfg.section("eval"))
    print(results_markdown(records))
    return records


def zero_shot(cfg: Config, ckpt: Path) -> list[dict]:
    from fusionrec.cluster.zeroshot import run_zeroshot
    from fusionrec.cluster.zeroshot_tables import zeroshot_markdown

    records = run_zeroshot(ckpt, cfg.corpus_dir(), cfg=cfg.section("zeroshot"))
    print(zeroshot_markdown(records))
    return records


def verdict(cfg: Config, eval_records: list[dict], zs_records: list[dict]) -> Path:
    """Which model beats which (paired intervals), zero-shot vs random, and the training curves PNG."""
    from fusionrec.launch.curves import plot_training_curves
    from fusionrec.launch.verdict import write_verdict

    run_dir = Path(cfg.train.run_dir)
    for line in write_verdict(run_dir, eval_records, zs_records):
        print(f"   {line}")
    return plot_training_curves(run_dir / "tensorboard", run_dir / "training_curves.png", "fusionrec demo")


SASREC_EPOCHS = 8  # the demo world's SASRec converges in a few epochs; validation picks the best of them


def run_demo(out: str | Path = "runs/demo", nproc: int = 2, users: int | None = None, items: int | None = None,
             overrides: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    out = Path(out)
    cfg = demo_config(out, overrides or [])
    timings: dict[str, float] = {}
    _stage("1/7 synthesize the world: raw Amazon-2014 + Yelp files", lambda: synthesize(cfg, out, users, items),
           timings)  # fmt: skip
    _stage(
        "2/7 prepare the Fusion corpus (Ray Data -> WebDataset shards)", lambda: prepare_corpus(cfg), timings
    )
    _stage(f"3/7 train IDGenRec (DeepSpeed ZeRO-{cfg.train.deepspeed.zero_stage}, {nproc} CPU ranks)",
           lambda: train(cfg, nproc), timings)  # fmt: skip
    ckpt = latest_checkpoint(cfg)
    _stage("4/7 train SASRec baselines (one per pretraining platform)",
           lambda: train_sasrec_baselines(cfg, SASREC_EPOCHS, nproc), timings)  # fmt: skip
    records = _stage(f"5/7 evaluate on Ray actors ({ckpt.name}) against most-popular, SASRec and random",
                     lambda: evaluate_models(cfg, ckpt), timings)  # fmt: skip
    zs = _stage("6/7 zero-shot on held-out platforms (their items get IDs from the trained scheme)",
                lambda: zero_shot(cfg, ckpt), timings)  # fmt: skip
    curves = _stage(
        "7/7 verdict (paired 95% intervals over users)", lambda: verdict(cfg, records, zs), timings
    )
    run_dir = Path(cfg.train.run_dir).resolve()
    print("\n== where things are")
    print(f"   TensorBoard:  tensorboard --logdir {run_dir / 'tensorboard'} --host 127.0.0.1")
    print(f"   curves:       {curves}")
    print(f"   verdict:      {run_dir / 'verdict.md'} (+ .json)")
    print(f"   evaluation:   {run_dir / 'eval'}/results.md|csv|png")
    print(f"   zero-shot:    {run_dir / 'zeroshot'}/zeroshot.md|csv|png")
    print(f"   checkpoint:   {ckpt}   (fusionrec export --checkpoint {ckpt} --out DIR)")
    print(f"   stage times:  {', '.join(f'{k.split()[0]} {v:.0f}s' for k, v in timings.items())}")
    return {"out": str(out.resolve()), "checkpoint": str(ckpt), "seconds": timings}
