"""The zero-shot cross-platform harness (IDGenRec §3.5, `fusionrec zeroshot`).

A model pretrained on the Fusion corpus is evaluated, with no training at all, on every held-out dataset
of the same prepared corpus (`OUT/zeroshot/<dataset>/`, each a corpus of its own): intra-platform (another
Amazon category) and inter-platform (e.g. Yelp). Its items were never seen, so their textual IDs are built
by the trained ID generator with diverse ID generation (Algorithm 1), once per dataset on the driver; the
table is saved beside the results and shipped to the evaluator actors.

Beside the model, each dataset gets a most-popular row on the same users and metrics. It is fitted on the
held-out platform's OWN training split (every user's items[:-2]), so unlike the model it is not zero-shot:
it has seen that platform's interactions. It answers "does the zero-shot model beat a popularity list that
had in-domain data?" and is labelled that way in every table.

Output (RESULTS defaults to RUN/zeroshot): RESULTS/<dataset>.json per dataset as it finishes (metrics,
#users, which users, seconds, users/s, ID-generation seconds and stats, the most-popular record, the paper's
numbers when the name matches), RESULTS/id_tables/<dataset>.json, and — only after every dataset finished —
RESULTS/zeroshot.md, .csv and .png. Every input is validated before the first (slow) evaluation starts.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .evaluator import EvaluatorConfig, evaluate
from .generative import (
    GenerativeEvalConfig,
    IDGenRecScorerFactory,
    atomic_write,
    check_ray_address,
    checkpoint_path,
    claim_results_dir,
    generate_dataset_table,
    load_evalset,
    load_id_generator,
    module_state,
    run_section,
    sample_users,
)
from .ray_local import RayConfig

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
METRICS = ("HR@5", "HR@10", "NDCG@5", "NDCG@10")
MOST_POPULAR_FIT = "the held-out dataset's own training split (each user's items[:-2]); not zero-shot"
# Raw formats -> platform: a held-out dataset from a platform seen in pretraining is "intra-platform".
PLATFORM = {"amazon2014": "amazon", "p5": "amazon", "yelp": "yelp", "movielens": "movielens"}


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
    most_popular: bool = True  # the in-domain popularity row beside the model (see the module docstring)

    def __post_init__(self) -> None:
        if max(self.evaluator.ks) > self.generative.top_k:
            raise ValueError(
                f"zeroshot.evaluator.ks={self.evaluator.ks} needs generative.top_k >= {max(self.evaluator.ks)}"
            )
        if not {5, 10} <= set(self.evaluator.ks):
            raise ValueError(f"zeroshot.evaluator.ks={self.evaluator.ks} must include 5 and 10 (Table 7)")


def idgen_config(checkpoint: Path, overrides: dict[str, Any]) -> Any:
    """The run's Algorithm-1 settings with `overrides` applied (validated by IDGenConfig)."""
    from ..trainer.idgen.generator import IDGenConfig

    return IDGenConfig(**{**run_section(checkpoint).get("idgen", {}), **overrides})


def paper_numbers(dataset: str) -> dict[str, dict[str, float]] | None:
    """Table 7's rows for a dataset name (`sports`, `music`, `yelp`, ... or the Amazon category name)."""
    key = dataset.lower()
    return PAPER_TABLE7.get(PAPER_ALIASES.get(key, key))


def scenarios(corpus: Path) -> dict[str, str]:
    """dataset -> "intra-platform" | "inter-platform" from the corpus' config (pretraining platforms)."""
    path = corpus / "config.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    fmt = {d["name"]: PLATFORM.get(d["format"], d["format"]) for d in data.get("datasets", [])}
    pretrain = data.get("fusion", {}).get("pretrain") or []
    seen = {fmt[n] for n in pretrain if n in fmt}
    return {
        n: ("intra-platform" if p in seen else "inter-platform") for n, p in fmt.items() if n not in pretrain
    }


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

    Order: validate everything (Ray address, checkpoint + its ID table and generator, every dataset's
    sequences and item texts), then per dataset: Algorithm-1 IDs → actor evaluation → RESULTS/<ds>.json;
    the summary tables come last, so a failure never leaves a table that looks complete.
    """
    cfg = cfg or ZeroShotConfig()
    check_ray_address(cfg.ray)
    ckpt, corpus = checkpoint_path(checkpoint), Path(corpus_dir).resolve()
    module_state(ckpt)
    idgen_config(ckpt, cfg.idgen)  # a bad Algorithm-1 override fails before any work
    names = heldout_datasets(corpus, datasets if datasets is not None else cfg.datasets)
    gen = cfg.generative
    prepared = {n: _prepare_dataset(corpus, n, gen) for n in names}  # all inputs checked up front
    out = Path(results_dir or cfg.results_dir or ckpt.parent.parent / "zeroshot")
    identity = {"checkpoint": str(ckpt), "corpus": str(corpus), "datasets": names,
                "generative": dataclasses.asdict(gen), "ks": list(cfg.evaluator.ks)}  # fmt: skip
    claim_results_dir(out, identity, summaries="zeroshot.*")
    generator = load_id_generator(ckpt)  # once for every dataset
    kinds = scenarios(corpus)
    records = []
    for name in names:
        rec = _run_one(ckpt, name, prepared[name], generator, cfg, out)
        rec["scenario"] = kinds.get(name, "unknown")
        atomic_write(out / f"{name}.json", json.dumps(rec, indent=2, sort_keys=True, default=str))
        records.append(rec)
    write_zeroshot_tables(out, records)
    return records


def _prepare_dataset(corpus: Path, name: str, gen: GenerativeEvalConfig) -> dict[str, Any]:
    from ..trainer.idgenrec_data import load_items

    ds_dir = _dataset_dir(corpus, name)
    load_items(ds_dir)  # empty item text -> ValueError naming file, row and item
    full = load_evalset(ds_dir, gen.split, name)
    data, selection = sample_users(full, gen.max_users, gen.seed)
    return {"dir": ds_dir, "data": data, "selection": selection, "all_users": len(full)}


def _run_one(ckpt: Path, name: str, prep: dict, generator: tuple, cfg: ZeroShotConfig, out: Path) -> dict:
    gen = cfg.generative
    t0 = time.perf_counter()
    table = generate_dataset_table(ckpt, prep["dir"], idgen_config(ckpt, cfg.idgen), generator=generator)
    idgen_s = time.perf_counter() - t0
    table.save(out / "id_tables" / f"{name}.json")
    factory = IDGenRecScorerFactory(str(ckpt), str(prep["dir"]), gen.top_k, gen.num_beams, gen.batch_size,
                                    gen.exclude_history, "generate", table, gen.threads)  # fmt: skip
    res = evaluate(prep["data"], factory, cfg.evaluator, scorer_desc=factory.describe(),
                   results_dir=out / "units" / name, ray_cfg=cfg.ray)  # fmt: skip
    popular = most_popular_record(name, prep, cfg, out) if cfg.most_popular else None
    return {
        **res.as_dict(),
        "most_popular": popular,
        "model": "idgenrec",
        "split": gen.split,
        "users_selection": prep["selection"],
        "split_users": prep["all_users"],
        "idgen_seconds": idgen_s,
        "id_table": {"version": table.version, "items": len(table), "stats": table.stats},
        "paper": paper_numbers(name),
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
    return {**res.as_dict(), "model": "most_popular", "fit_on": MOST_POPULAR_FIT,
            "users_selection": prep["selection"], "config": dataclasses.asdict(factory)}  # fmt: skip


# ------------------------------------------------------------------------------------------------ tables


def zeroshot_rows(records: list[dict[str, Any]]) -> list[list[str]]:
    """Header + one row per dataset: ours, most-popular fitted on the dataset's own training split (same
    users), then Table 7's IDGenRec and UniSRec where the name matches."""
    paper_cols = [f"paper {m} {k}" for m in ("IDGenRec", "UniSRec") for k in METRICS]
    popular_cols = [f"most_popular(own train) {k}" for k in METRICS]
    rows = [["dataset", "scenario", *METRICS, "users", "users_selection", "seconds", "users/s", "idgen_s",
             *popular_cols, *paper_cols]]  # fmt: skip
    for r in records:
        paper = r.get("paper") or {}
        theirs = [
            f"{paper[m][k]:.4f}" if m in paper else "" for m in ("IDGenRec", "UniSRec") for k in METRICS
        ]
        pop = (r.get("most_popular") or {}).get("metrics")
        popular = [f"{pop[k]:.4f}" if pop else "" for k in METRICS]
        rows.append([r["dataset"], r.get("scenario", ""), *(f"{r['metrics'][k]:.4f}" for k in METRICS),
                     str(r["users"]), r["users_selection"]["selection"], f"{r['seconds']:.1f}",
                     f"{r['users_per_s']:.2f}", f"{r['idgen_seconds']:.1f}", *popular, *theirs])  # fmt: skip
    return rows


def zeroshot_markdown(records: list[dict[str, Any]]) -> str:
    """Ours per dataset, and below it the paper's Table 7 row for the same dataset when one exists."""
    head = ["dataset", "scenario", "model", *METRICS, "users", "seconds", "users/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        m = r["metrics"]
        lines.append(f"| {r['dataset']} | {r.get('scenario', '')} | ours ({r['users_selection']['selection']}) | "
                     + " | ".join(f"{m[k]:.4f}" for k in METRICS)
                     + f" | {r['users']} | {r['seconds']:.1f} | {r['users_per_s']:.2f} |")  # fmt: skip
        pop = r.get("most_popular")
        if pop:
            lines.append(f"| {r['dataset']} | | most-popular (fit on {r['dataset']}'s own train split; not zero-shot) | "
                         + " | ".join(f"{pop['metrics'][k]:.4f}" for k in METRICS)
                         + f" | {pop['users']} | {pop['seconds']:.1f} | {pop['users_per_s']:.2f} |")  # fmt: skip
        for model, vals in (r.get("paper") or {}).items():
            lines.append(f"| {r['dataset']} | | paper {model} (Table 7) | "
                         + " | ".join(f"{vals[k]:.4f}" for k in METRICS) + " | | | |")  # fmt: skip
    return "\n".join(lines) + "\n"


def write_zeroshot_tables(out: Path, records: list[dict[str, Any]]) -> dict[str, str]:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(zeroshot_rows(records))
    paths = {
        "markdown": atomic_write(out / "zeroshot.md", zeroshot_markdown(records)),
        "csv": atomic_write(out / "zeroshot.csv", buf.getvalue()),
        "png": plot_zeroshot(records, out / "zeroshot.png"),
    }
    return {k: str(v) for k, v in paths.items()}


def plot_zeroshot(records: list[dict[str, Any]], path: Path) -> Path:
    """One panel per metric: bars per dataset for ours and, where known, the paper's IDGenRec/UniSRec."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = ["ours", "most-popular (own train)", "paper IDGenRec", "paper UniSRec"]
    names = [r["dataset"] for r in records]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.2))
    width = 0.8 / len(series)
    for ax, metric in zip(axes, METRICS, strict=True):
        for j, s in enumerate(series):
            vals = [_value(r, s, metric) for r in records]
            ax.bar([i + j * width for i in range(len(names))], vals, width, label=s)
        ax.set_xticks([i + width for i in range(len(names))], names, rotation=30)
        ax.set_title(metric)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def _value(record: dict[str, Any], series: str, metric: str) -> float:
    if series == "ours":
        return record["metrics"][metric]
    if series.startswith("most-popular"):
        return ((record.get("most_popular") or {}).get("metrics") or {}).get(metric, 0.0)
    paper = record.get("paper") or {}
    return paper.get(series.split()[-1], {}).get(metric, 0.0)
