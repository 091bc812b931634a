"""`prepare`: raw datasets -> processed parquet + WebDataset shards + manifests, atomically.

Layout of OUT (docs/ARCHITECTURE.md):
    OUT/manifest.json, OUT/shard-*.tar        the pretraining (or single) corpus
    OUT/items.parquet                          every item of that corpus: item_id (namespaced), text, dataset
    OUT/processed/<dataset>/{items,sequences}.parquet
    OUT/config.toml (the CLI's resolved config text), OUT/config.json (the DataConfig as JSON)
    OUT/zeroshot/<dataset>/                    each held-out dataset as a corpus of the same layout

Atomicity: everything is written into a temp dir beside OUT, the root manifest last; only then is OUT
swapped in with two renames. A failed run deletes its temp dir: OUT is either absent, or the previous
complete corpus, never a half corpus. An existing OUT that is not a corpus (no manifest) and not empty
is refused rather than deleted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .config import DataConfig, DatasetSpec
from .fusion import build_corpora
from .preprocess import ProcessedDataset, preprocess
from .records import RawDataset
from .shards import MANIFEST, sha256_file, write_shards

Reader = Callable[..., RawDataset]


def _default_reader(fmt: str, input_dir: str, name: str | None = None, **kw) -> RawDataset:
    from .readers import read_dataset  # imported lazily: readers are another module's concern

    return read_dataset(fmt, input_dir, name=name, **kw)


def read_and_preprocess(spec: DatasetSpec, cfg: DataConfig, reader: Reader) -> tuple[ProcessedDataset, dict]:
    """One dataset through its reader and preprocessing; returns it and {source path: sha256}."""
    kw = {"category": spec.category} if spec.category else {}
    raw = reader(spec.format, spec.input, name=spec.name, **kw)
    if raw.name != spec.name:  # namespacing relies on the configured name
        raw = dataclasses.replace(raw, name=spec.name)
    sources = {str(Path(p).resolve()): sha256_file(p) for p in raw.source_files}
    return preprocess(raw, cfg, cfg.policy(spec)), sources


def _write_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def write_corpus(
    out_dir: Path, datasets: list[ProcessedDataset], cfg: DataConfig, sources: dict[str, str]
) -> dict:
    """Processed parquet, items.parquet, shards and (last) the manifest of one corpus."""
    for ds in datasets:
        _write_parquet(ds.items, out_dir / "processed" / ds.name / "items.parquet")
        _write_parquet(ds.sequences, out_dir / "processed" / ds.name / "sequences.parquet")
    items = pa.concat_tables(
        [
            ds.items.select(["item_id", "text"]).append_column(
                "dataset", pa.array([ds.name] * ds.items.num_rows, pa.string())
            )
            for ds in datasets
        ]
    )
    _write_parquet(items, out_dir / "items.parquet")
    return write_shards(
        datasets,
        out_dir,
        cfg.shards,
        max_history=cfg.max_history,
        seed=cfg.seed,
        sources=sources,
        config_sha256=cfg.sha256(),
    )


def _check_out(out: Path) -> None:
    if out.exists() and not (out / MANIFEST).exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(
            f"{out} exists and is not a fusionrec corpus (no {MANIFEST}); refusing to replace it"
        )


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Replace `out` by `tmp` with renames only (same parent directory, so each rename is atomic)."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex}")
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old)
    else:
        os.rename(tmp, out)


def prepare(
    cfg: DataConfig, out_dir: str | Path, config_text: str | None = None, *, reader: Reader | None = None
) -> dict:
    """Build the corpus described by `cfg` into `out_dir`.

    Returns {"out", "manifest" (root corpus), "zeroshot": {name: manifest}, "policies": {name: resolved
    data policy (config.DatasetPolicy as a dict)}, "seconds": {stage: s}}. Each manifest also records its
    datasets' policies (`datasets.<name>.policy`).
    `config_text` (the resolved TOML the CLI loaded) is stored as OUT/config.toml.
    """
    if not cfg.datasets:
        raise ValueError("data.datasets is empty: nothing to prepare")
    reader = reader or _default_reader
    out = Path(out_dir).resolve()
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex}")
    tmp.mkdir()
    seconds: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        processed, sources = {}, {}
        for spec in cfg.datasets:
            processed[spec.name], sources[spec.name] = read_and_preprocess(spec, cfg, reader)
        t1 = time.perf_counter()
        corpora = build_corpora(processed, cfg)
        t2 = time.perf_counter()
        zeroshot = {}
        for name, ds in corpora.zeroshot.items():
            zeroshot[name] = write_corpus(tmp / "zeroshot" / name, [ds], cfg, sources[name])
        if config_text is not None:
            (tmp / "config.toml").write_text(config_text)
        (tmp / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1) + "\n")
        root_sources = {p: h for ds in corpora.pretrain for p, h in sources[ds.name].items()}
        manifest = write_corpus(tmp, corpora.pretrain, cfg, root_sources)  # root manifest: the last file
        t3 = time.perf_counter()
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds.update({"read_preprocess": t1 - t0, "fusion": t2 - t1, "write": t3 - t2})
    policies = {spec.name: cfg.policy(spec).as_dict() for spec in cfg.datasets}
    return {"out": str(out), "manifest": manifest, "zeroshot": zeroshot, "policies": policies, "seconds": seconds}


def prepare_one(
    fmt: str,
    input_dir: str | Path,
    out_dir: str | Path,
    *,
    name: str | None = None,
    category: str | None = None,
    platform: str = "",
    base: DataConfig | None = None,
    config_text: str | None = None,
    reader: Reader | None = None,
) -> dict:
    """The one-dataset form (`fusionrec prepare --input DIR --format F --out OUT`): one corpus, no cap.

    `base` carries the other settings (kcore, shards, ...); its datasets and Fusion lists are replaced.
    """
    base = base or DataConfig()
    name = name or Path(input_dir).resolve().name.replace(".", "_").replace(" ", "_")
    spec = DatasetSpec(name=name, format=fmt, input=str(input_dir), category=category, platform=platform)
    fusion = dataclasses.replace(base.fusion, pretrain=[], zeroshot=[])
    cfg = dataclasses.replace(base, datasets=[spec], fusion=fusion)
    return prepare(cfg, out_dir, config_text, reader=reader)
