"""The zero-shot cross-platform harness (IDGenRec §3.5, `fusionrec zeroshot`).

A model pretrained on the Fusion corpus is evaluated, with no training at all, on every held-out dataset
of the same prepared corpus (`OUT/zeroshot/<dataset>/`, each a corpus of its own). Its items were never seen,
so their textual IDs are built by the scheme the recommender was trained on (`trained_id_scheme`, read from
the checkpoint): title IDs exactly like training's when it was trained on title IDs, the trained ID
generator with diverse ID generation (Algorithm 1) only when the checkpoint's table came from the generator.
Each table is built once per dataset on the driver, saved beside the results, described by its quality
diagnostics (`trainer/idgen/quality.py`) and checked: with ``id_quality = "refuse"`` (default) a degenerate
table (IDs that are not the items' words, duplicates, stubs) is a ValueError before ANY dataset is scored;
with ``"warn"`` it is scored under a loud warning that every record and table repeats.

Every figure comes with what it is read against:
- its sample size (users) and a 95% percentile bootstrap interval over users (`results.metric_intervals`);
- the exact expectation of a uniformly random ranking of the same users' candidates (`random_ranking_metrics`:
  HR@k = k / #items without history exclusion);
- a most-popular row fitted on the held-out platform's OWN training split (every user's items[:-2]), on the
  same users and metrics. It has seen that platform's interactions, so it is NOT zero-shot, and is labelled
  that way everywhere; it answers "does the zero-shot model beat a popularity list that had in-domain data?".
The paper's Table 7 numbers were measured on other data (pretraining on 19 other Amazon datasets); they are
kept out of our table and plot, in a separate reference section and file that says so.

Scenario per dataset: from the platform each dataset DECLARES in the corpus' config.json (``platform``):
"intra-platform" when a pretraining dataset declares the same platform, "inter-platform" when every
pretraining dataset declares another, "undeclared platform" when the held-out dataset declares none. The file
format is never taken for a platform.

Output (RESULTS defaults to RUN/zeroshot): RESULTS/id_tables/<dataset>.json (all written and checked before
the first evaluation), RESULTS/<dataset>.json per dataset as it finishes (metrics, intervals, #users, which
users, random expectation, most-popular record, ID scheme and quality, seconds, ...), and — only after every
dataset finished — RESULTS/zeroshot.md, .csv, .png and zeroshot.reference.csv (the paper's numbers).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..trainer.idgen.quality import QUALITY_MODES, QualityThresholds, check_quality
from .checkpoint_io import (
    checkpoint_path,
    load_checkpoint_tokenizer,
    load_id_generator,
    module_state,
    run_section,
)
from .evaluator import EvaluatorConfig, evaluate
from .generative import (
    GenerativeEvalConfig,
    IDGenRecScorerFactory,
    atomic_write,
    check_ray_address,
    claim_results_dir,
    load_evalset,
    sample_users,
)
from .heldout_ids import heldout_id_table, trained_id_scheme, training_table_quality
from .idgen_pool import IDGenPoolConfig
from .ray_local import RayConfig
from .results import metric_intervals, random_ranking_metrics
from .zeroshot_tables import INTERVAL, PAPER_SOURCE, write_zeroshot_tables

log = logging.getLogger(__name__)

# IDGenRec paper (001_idgenrec.txt), Table 7 "Zero-shot Evaluation": the foundation model pretrained on the
# 19-dataset Fusion corpus, tested zero-shot; UniSRec is the paper's zero-shot baseline.
PAPER_TABLE7: dict[str, dict[str, dict[str, float]]] = {
    "sports": {"IDGenRec": {"HR@5": 0.0156, "NDCG@5": 0.0134, "HR@10": 0.0218, "NDCG@10": 0.0154},
               "UniSRec": {"HR@5": 0.0060, "NDCG@5": 0.0034, "HR@10": 0.0098, "NDCG@10": 0.0046}},
    "beauty": {"IDGenRec": {"HR@5": 0.0174, "NDCG@5": 0.0135, "HR@10": 0.0310, "NDCG@10": 0.0177},
               "UniSRec": {"HR@5": 0.0118, "NDCG@5": 0.0068, "HR@10": 0.0206, "NDCG@10": 0.0096}},
    "toys": {"IDGenRec": {"HR@5": 0.0103, "NDCG@5": 0.0079, "HR@10": 0.0215, "NDCG@10": 0.0114},
             "UniSRec": {"HR@5": 0.0097, "NDCG@5": 0.0055, "HR@10": 0.0175, "NDCG@10": 0.0080}},
    "music": {"IDGenRec": {"HR@5": 0.0184, "NDCG@5": 0.0148, "HR@10": 0.0238, "NDCG@10": 0.0165},
              "UniSRec": {"HR@5": 0.0152, "NDCG@5": 0.0087, "HR@10": 0.0294, "NDCG@10": 0.0133}},
    "instruments": {"IDGenRec": {"HR@5": 0.0203, "NDCG@5": 0.0139, "HR@10": 0.0440, "NDCG@10": 0.0215},
                    "UniSRec": {"HR@5": 0.0154, "NDCG@5": 0.0084, "HR@10": 0.0280, "NDCG@10": 0.0125}},
    "yelp": {"IDGenRec": {"HR@5": 0.0300, "NDCG@5": 0.0248, "HR@10": 0.0329, "NDCG@10": 0.0258},
             "UniSRec": {"HR@5": 0.0064, "NDCG@5": 0.0051, "HR@10": 0.0081, "NDCG@10": 0.0057}},
}  # fmt: skip
PAPER_ALIASES = {"digital_music": "music", "musical_instruments": "instruments", "sports_and_outdoors": "sports",
                 "toys_and_games": "toys"}  # fmt: skip
# What the paper's numbers were measured on (001_idgenrec.txt §3.1, §3.5): not our data, not our pretraining.
MOST_POPULAR_FIT = "the held-out dataset's own training split (each user's items[:-2]); not zero-shot"
UNDECLARED = "undeclared platform"


@dataclass
class ZeroShotConfig:
    """`fusionrec zeroshot --config X.toml`: the `[zeroshot]` section."""

    checkpoint: str = ""  # RUN/checkpoints/step-N of an IDGenRec run pretrained on `corpus`
    corpus: str = ""  # the prepared Fusion corpus (OUT); its OUT/zeroshot/* are evaluated
    datasets: list[str] = field(default_factory=list)  # empty = every OUT/zeroshot/*
    results_dir: str = ""  # "" = RUN/zeroshot
    generative: GenerativeEvalConfig = field(default_factory=GenerativeEvalConfig)
    evaluator: EvaluatorConfig = field(default_factory=lambda: EvaluatorConfig(ks=(5, 10, 20)))
    ray: RayConfig = field(default_factory=RayConfig)
    # Algorithm 1 settings on top of the run's [idgenrec.idgen] (e.g. {"batch_size": 128}); {} = as trained.
    idgen: dict[str, Any] = field(default_factory=dict)
    # Where a generator scheme's Algorithm-1 jobs run (num_actors = 0: on the driver). Its candidates are kept
    # in RESULTS/id_tables/<dataset>.candidates/, so an interrupted zeroshot resumes the table exactly.
    idgen_pool: IDGenPoolConfig = field(default_factory=IDGenPoolConfig)
    most_popular: bool = True  # the in-domain popularity row beside the model (see the module docstring)
    # A degenerate held-out ID table: "refuse" (ValueError before any scoring) or "warn" (scored, flagged).
    id_quality: str = "refuse"
    # Overrides of trainer.idgen.quality.QualityThresholds, e.g. {"min_word_in_text": 0.3}.
    id_quality_thresholds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if max(self.evaluator.ks) > self.generative.top_k:
            raise ValueError(
                f"zeroshot.evaluator.ks={self.evaluator.ks} needs generative.top_k >= {max(self.evaluator.ks)}"
            )
        if not {5, 10} <= set(self.evaluator.ks):
            raise ValueError(f"zeroshot.evaluator.ks={self.evaluator.ks} must include 5 and 10 (Table 7)")
        if self.id_quality not in QUALITY_MODES:
            raise ValueError(f"zeroshot.id_quality must be one of {QUALITY_MODES}, got {self.id_quality!r}")
        self.thresholds()  # unknown or out-of-range thresholds fail here

    def thresholds(self) -> QualityThresholds:
        return QualityThresholds.from_overrides(self.id_quality_thresholds)


def idgen_config(checkpoint: Path, overrides: dict[str, Any]) -> Any:
    """The run's Algorithm-1 settings with `overrides` applied (validated by IDGenConfig)."""
    from ..trainer.idgen.generator import IDGenConfig

    return IDGenConfig(**{**run_section(checkpoint).get("idgen", {}), **overrides})


def paper_numbers(dataset: str) -> dict[str, dict[str, float]] | None:
    """Table 7's rows for a dataset name (`sports`, `music`, `yelp`, ... or the Amazon category name)."""
    key = dataset.lower()
    return PAPER_TABLE7.get(PAPER_ALIASES.get(key, key))


def scenarios(corpus: Path) -> dict[str, str]:
    """held-out dataset -> scenario, from the platform each dataset DECLARES in the corpus' config.json
    (``datasets[i].platform``; "" or missing = undeclared; compared case-insensitively):

    - "undeclared platform": the held-out dataset declares none;
    - "intra-platform": a pretraining dataset declares the same platform;
    - "inter-platform": every pretraining dataset declares a platform, none this one;
    - "unknown: pretraining platform undeclared (a, b)": otherwise (it might be the same platform).
    """
    path = corpus / "config.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    declared = {d["name"]: str(d.get("platform") or "").strip().lower() for d in data.get("datasets", [])}
    pretrain = data.get("fusion", {}).get("pretrain") or []
    seen = {declared[n] for n in pretrain if declared.get(n)}
    unknown = [n for n in pretrain if not declared.get(n)]
    out = {}
    for name, platform in declared.items():
        if name in pretrain:
            continue
        if not platform:
            out[name] = UNDECLARED
        elif platform in seen:
            out[name] = "intra-platform"
        elif unknown:
            out[name] = f"unknown: pretraining platform undeclared ({', '.join(unknown)})"
        else:
            out[name] = "inter-platform"
    return out


def heldout_datasets(corpus: Path, datasets: list[str] | None) -> list[str]:
    """The held-out datasets to evaluate: all of OUT/zeroshot/* or the named ones (each must exist)."""
    root = corpus / "zeroshot"
    found = sorted(p.name for p in root.glob("*") if (p / "manifest.json").is_file()) if root.is_dir() else []
    if not datasets:
        if not found:
            raise FileNotFoundError(
                f"{root}: no held-out datasets (prepare with data.fusion.zeroshot = [...])"
            )
        return found
    unknown = [d for d in datasets if d not in found]
    if unknown:
        raise ValueError(f"zeroshot.datasets {unknown} are not in {root} (found: {found})")
    return list(datasets)


def _dataset_dir(corpus: Path, name: str) -> Path:
    """The held-out dataset's processed folder (items.parquet with texts + sequences.parquet)."""
    path = corpus / "zeroshot" / name / "processed" / name
    if not (path / "sequences.parquet").is_file():
        raise FileNotFoundError(f"{path}: missing sequences.parquet; is {corpus} a prepared corpus?")
    return path


def run_zeroshot(
    checkpoint: str | Path,
    corpus_dir: str | Path,
    datasets: list[str] | None = None,
    cfg: ZeroShotConfig | None = None,
    *,
    results_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Evaluate `checkpoint` zero-shot on each held-out dataset of `corpus_dir`; returns one record each.

    Order: validate everything (Ray address, checkpoint + its ID table and scheme, every dataset's sequences
    and item texts), build and check EVERY held-out ID table (a degenerate one is refused here, before any
    user is scored), then per dataset: actor evaluation → RESULTS/<ds>.json; the summary tables come last,
    so a failure never leaves a table that looks complete.
    """
    cfg = cfg or ZeroShotConfig()
    check_ray_address(cfg.ray)
    ckpt, corpus = checkpoint_path(checkpoint), Path(corpus_dir).resolve()
    module_state(ckpt)
    scheme = trained_id_scheme(ckpt)
    idgen = idgen_config(ckpt, cfg.idgen)  # a bad Algorithm-1 override fails before any work
    names = heldout_datasets(corpus, datasets if datasets is not None else cfg.datasets)
    gen = cfg.generative
    prepared = {n: _prepare_dataset(corpus, n, gen) for n in names}  # all inputs checked up front
    out = Path(results_dir or cfg.results_dir or ckpt.parent.parent / "zeroshot")
    identity = {"checkpoint": str(ckpt), "corpus": str(corpus), "datasets": names,
                "generative": dataclasses.asdict(gen), "ks": list(cfg.evaluator.ks),
                "id_scheme": scheme["scheme"]}  # fmt: skip
    claim_results_dir(out, identity, summaries="zeroshot.*")
    pooled = cfg.idgen_pool.num_actors > 0  # the actors load the generator themselves
    generator = load_id_generator(ckpt) if scheme["scheme"] == "generator" and not pooled else None
    tokenizer = generator[1] if generator is not None else load_checkpoint_tokenizer(ckpt)
    trained = training_table_quality(ckpt, corpus, tokenizer)
    tables = {n: _heldout_table(ckpt, n, prepared[n], scheme, idgen, generator, tokenizer, trained, cfg, out)
              for n in names}  # fmt: skip
    kinds = scenarios(corpus)
    records = []
    for name in names:
        rec = _run_one(ckpt, name, prepared[name], tables[name], cfg, out)
        rec.update(scenario=kinds.get(name, UNDECLARED), id_scheme=scheme, training_id_table=trained)
        atomic_write(out / f"{name}.json", json.dumps(rec, indent=2, sort_keys=True, default=str))
        records.append(rec)
    write_zeroshot_tables(out, records)
    return records


def _prepare_dataset(corpus: Path, name: str, gen: GenerativeEvalConfig) -> dict[str, Any]:
    from ..trainer.recipes.idgenrec.data import load_items

    ds_dir = _dataset_dir(corpus, name)
    load_items(ds_dir)  # empty item text -> ValueError naming file, row and item
    full = load_evalset(ds_dir, gen.split, name)
    data, selection = sample_users(full, gen.max_users, gen.seed)
    return {"dir": ds_dir, "data": data, "selection": selection, "all_users": len(full)}


def _heldout_table(ckpt: Path, name: str, prep: dict, scheme: dict, idgen: Any, generator: tuple | None,
                   tokenizer: Any, trained: dict, cfg: ZeroShotConfig, out: Path) -> dict[str, Any]:  # fmt: skip
    """Build, save and check one held-out dataset's ID table (refused here in "refuse" mode)."""
    t0 = time.perf_counter()
    table = heldout_id_table(ckpt, prep["dir"], scheme, idgen, generator, tokenizer,
                             store_dir=out / "id_tables" / f"{name}.candidates", pool=cfg.idgen_pool,
                             ray_cfg=cfg.ray)  # fmt: skip
    seconds = time.perf_counter() - t0
    path = table.save(out / "id_tables" / f"{name}.json")
    quality, thresholds = table.stats["quality"], cfg.thresholds()
    shown = {k: round(trained[k], 3) for k in ("word_in_text_share", "duplicate_base_share") if k in trained}
    problems = check_quality(
        quality, thresholds, cfg.id_quality,
        what=f"zero-shot dataset {name!r}: {scheme['scheme']} IDs of {len(table)} unseen items (saved to {path})",
        hint=f"The recommender was trained on {scheme['scheme']} IDs ({scheme['evidence']}); its training "
             f"table: {shown}. Set zeroshot.id_quality = 'warn' to score it anyway.",
    )  # fmt: skip
    if problems:
        banner = "!" * 100
        msg = (f"DEGENERATE ID TABLE for zero-shot dataset {name!r} ({scheme['scheme']} IDs, {path}): "
               f"{'; '.join(problems)}. Scored anyway because zeroshot.id_quality = 'warn'; expect "
               "random-level numbers. Flagged in every record and table.")  # fmt: skip
        log.warning(msg)
        print(f"{banner}\n{msg}\n{banner}", file=sys.stderr, flush=True)
    return {"table": table, "seconds": seconds, "path": str(path),
            "quality": {"mode": cfg.id_quality, "thresholds": dataclasses.asdict(thresholds),
                        "problems": problems, "status": "DEGENERATE (warned)" if problems else "ok"}}  # fmt: skip


def _metric_names(ks: tuple[int, ...]) -> list[str]:
    return [f"HR@{k}" for k in ks] + [f"NDCG@{k}" for k in ks]


def _run_one(ckpt: Path, name: str, prep: dict, built: dict, cfg: ZeroShotConfig, out: Path) -> dict:
    gen, table = cfg.generative, built["table"]
    factory = IDGenRecScorerFactory(str(ckpt), str(prep["dir"]), gen.top_k, gen.num_beams, gen.batch_size,
                                    gen.exclude_history, "generate", table, gen.threads)  # fmt: skip
    res = evaluate(prep["data"], factory, cfg.evaluator, scorer_desc=factory.describe(),
                   results_dir=out / "units" / name, ray_cfg=cfg.ray)  # fmt: skip
    popular = most_popular_record(name, prep, cfg, out) if cfg.most_popular else None
    paper = paper_numbers(name)
    return {
        **res.as_dict(),
        "intervals": metric_intervals(res.sums, _metric_names(cfg.evaluator.ks)),
        "interval": INTERVAL,
        "ranks": res.ranks.tolist(),  # per user, for paired comparisons (cluster.results.paired_difference)
        "random": random_ranking_metrics(prep["data"], cfg.evaluator.ks, gen.exclude_history),
        "most_popular": popular,
        "model": "idgenrec",
        "split": gen.split,
        "users_selection": prep["selection"],
        "split_users": prep["all_users"],
        "idgen_seconds": built["seconds"],
        "id_table": {
            "version": table.version,
            "items": len(table),
            "method": table.method,
            "path": built["path"],
            "stats": table.stats,
        },  # fmt: skip
        "id_quality": built["quality"],
        "paper_reference": {"source": PAPER_SOURCE, "numbers": paper} if paper else None,
        "checkpoint": str(ckpt),
        "config": dataclasses.asdict(gen),
    }


def most_popular_record(name: str, prep: dict, cfg: ZeroShotConfig, out: Path) -> dict[str, Any]:
    """Most-popular fitted on the held-out dataset's own training split, evaluated on exactly the model's
    users (`prep["data"]`) with the same evaluator, cutoffs and exclude_history."""
    from .baselines import most_popular_for

    gen = cfg.generative
    factory, vocab = most_popular_for(prep["dir"], out / "baselines" / f"most_popular-{name}", gen.top_k,
                                      gen.exclude_history)  # fmt: skip
    if vocab != list(prep["data"].item_ids):
        raise ValueError(f"{prep['dir']}: item table changed while evaluating {name}")
    res = evaluate(prep["data"], factory, cfg.evaluator, scorer_desc=dataclasses.asdict(factory),
                   results_dir=out / "units" / f"{name}.most_popular", ray_cfg=cfg.ray)  # fmt: skip
    return {**res.as_dict(), "model": "most_popular", "fit_on": MOST_POPULAR_FIT, "zero_shot": False,
            "intervals": metric_intervals(res.sums, _metric_names(cfg.evaluator.ks)), "interval": INTERVAL,
            "ranks": res.ranks.tolist(), "users_selection": prep["selection"], "config": dataclasses.asdict(factory)}  # fmt: skip
