"""`fusionrec demo`: the main job on the embedded default, end to end on a 2-core CPU, offline.

    synthesize raw files -> prepare the Fusion corpus (Ray Data) -> alternate-train a tiny IDGenRec with
    DeepSpeed on 2 CPU processes -> evaluate on Ray actors against the baselines -> zero-shot on held-out
    platforms -> print the results table and where the TensorBoard logs and plots are.

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

    prepare(cfg.data, cfg.corpus_dir(), config_text=dumps_toml(cfg))
    report = inspect(cfg.corpus_dir())
    print(format_inspect(report, indent="   "))
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


def evaluate_models(cfg: Config, ckpt: Path) -> list[dict]:
    """IDGenRec vs most-popular on every pretraining dataset's test users, on Ray actors."""
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


def run_demo(out: str | Path = "runs/demo", nproc: int = 2, users: int | None = None, items: int | None = None,
             overrides: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    out = Path(out)
    cfg = demo_config(out, overrides or [])
    timings: dict[str, float] = {}
    _stage("1/5 synthesize raw Amazon-2014 + Yelp files", lambda: synthesize(cfg, out, users, items), timings)
    _stage(
        "2/5 prepare the Fusion corpus (Ray Data -> WebDataset shards)", lambda: prepare_corpus(cfg), timings
    )
    _stage(f"3/5 alternate-train IDGenRec (DeepSpeed ZeRO-{cfg.train.deepspeed.zero_stage}, {nproc} CPU ranks)",
           lambda: train(cfg, nproc), timings)  # fmt: skip
    ckpt = latest_checkpoint(cfg)
    _stage(f"4/5 evaluate on Ray actors ({ckpt.name}) against most-popular",
           lambda: evaluate_models(cfg, ckpt), timings)  # fmt: skip
    _stage("5/5 zero-shot on held-out platforms (IDs for unseen items from the trained ID generator)",
           lambda: zero_shot(cfg, ckpt), timings)  # fmt: skip
    run_dir = Path(cfg.train.run_dir).resolve()
    print("\n== where things are")
    print(f"   TensorBoard:  tensorboard --logdir {run_dir / 'tensorboard'} --host 127.0.0.1")
    print(f"   evaluation:   {run_dir / 'eval'}/results.md|csv|png")
    print(f"   zero-shot:    {run_dir / 'zeroshot'}/zeroshot.md|csv|png")
    print(f"   checkpoint:   {ckpt}   (fusionrec export --checkpoint {ckpt} --out DIR)")
    print(f"   stage times:  {', '.join(f'{k.split()[0]} {v:.0f}s' for k, v in timings.items())}")
    return {"out": str(out.resolve()), "checkpoint": str(ckpt), "seconds": timings}
