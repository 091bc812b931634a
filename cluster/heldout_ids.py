"""ID tables for items the recommender never saw in training (zero-shot), built once on the driver.

The IDs come from the scheme the recommender was trained on (`trained_id_scheme`: the checkpoint's own table
says whether it is the title table or a generator table): title IDs built exactly like training's
(`title_dataset_table`), or the trained ID generator running Algorithm 1 (diverse ID generation) over the
items' texts (`generate_dataset_table`). `heldout_id_table` picks the scheme and attaches the table's
quality diagnostics; `training_table_quality` gives the same diagnostics for the checkpoint's own table.
The table then travels to the evaluation actors inside `IDGenRecScorerFactory` (cluster/generative.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from .checkpoint_io import (
    _offline,
    _prompt_config,
    checkpoint_path,
    load_checkpoint_tokenizer,
    load_id_generator,
    module_state,
    run_section,
)
from .ray_local import RayConfig

_NO_ZERO_SHOT_USERS = (
    "checkpoint {checkpoint} was trained with idgenrec.prompt.use_user_id = true: zero-shot evaluation "
    "(IDs generated for unseen items) has no user IDs for unseen users; not supported"
)


def generate_dataset_table(
    checkpoint: str | Path,
    dataset_dir: str | Path,
    idgen: Any = None,
    generator: tuple | None = None,
    *,
    store_dir: str | Path | None = None,
    pool: Any = None,
    ray_cfg: RayConfig | None = None,
) -> Any:
    """IDs for every item of `dataset_dir` by Algorithm 1 with the checkpoint's trained ID generator.

    `idgen` (an IDGenConfig) defaults to the run's `[idgenrec.idgen]`; `generator` = a preloaded (model,
    tokenizer) to share across datasets. `store_dir`: the candidates are kept there, so a killed run resumes
    (same table). `pool` (an IDGenPoolConfig with num_actors > 0): the jobs run on Ray actors, the walk here
    (same table). Items without text → ValueError naming the file, row and item (from `load_items`).
    """
    _offline()
    from ..trainer.idgen.candidate_store import CandidateStore, texts_hash
    from ..trainer.idgen.generator import IDGenConfig, generate_ids
    from ..trainer.recipes.idgenrec.data import load_items

    if _prompt_config(checkpoint).use_user_id:  # on the driver, before any actor starts
        raise ValueError(_NO_ZERO_SHOT_USERS.format(checkpoint=checkpoint))
    texts, _ = load_items(dataset_dir)
    if idgen is None:
        idgen = IDGenConfig(**run_section(checkpoint).get("idgen", {}))
    store = None
    if store_dir is not None:
        ckpt = checkpoint_path(checkpoint)
        marker = hashlib.sha256((ckpt / "COMPLETE.json").read_bytes()).hexdigest()
        store = CandidateStore(store_dir, {"checkpoint": str(ckpt), "checkpoint_complete_sha256": marker,
                                           "texts_sha256": texts_hash(texts), "idgen": dataclasses.asdict(idgen)})  # fmt: skip
    if pool is not None and pool.num_actors > 0:
        from .idgen_pool import RayIDGenRunner

        tokenizer = generator[1] if generator is not None else load_checkpoint_tokenizer(checkpoint)
        with RayIDGenRunner(checkpoint_path(checkpoint), idgen, texts, pool, ray_cfg) as runner:
            return generate_ids(None, tokenizer, texts, idgen, runner=runner, store=store)
    model, tokenizer = generator if generator is not None else load_id_generator(checkpoint)
    return generate_ids(model, tokenizer, texts, idgen, store=store)


ID_SCHEMES = ("title", "generator")


def trained_id_scheme(checkpoint: str | Path) -> dict[str, Any]:
    """How the IDs the recommender was trained on were made, read from the checkpoint (not the live code).

    The checkpoint's ID table is the table the recommender last trained on: a title table records
    ``stats["initial"] = "title"`` (`title_table`), an Algorithm-1 table records its attempt stats. Only a
    table with neither (an older checkpoint) falls back to the run's config (`initial_ids = "title"` with no
    ``id`` phase in `order` = fixed title IDs). Returns {"scheme": "title" | "generator", "title_words",
    "round", "initial_ids", "order", "evidence"}."""
    ckpt = checkpoint_path(checkpoint)
    table = module_state(ckpt)["table"]
    stats, section = table.get("stats") or {}, run_section(ckpt)
    initial, order = section.get("initial_ids", "title"), list(section.get("order", ["id", "rec"]))
    if stats.get("initial") == "collab":
        raise ValueError(
            f"{ckpt}: the recommender was trained on collaborative IDs (idgenrec.initial_ids = 'collab'), "
            "which exist only for items with training interactions; unseen items have none (zero-shot needs "
            "title or generator IDs)"
        )
    if stats.get("initial") == "title":
        scheme, evidence = "title", "the checkpoint's ID table is the title table (stats.initial = 'title')"
    elif "second_attempt_share" in stats or "walks" in stats:
        scheme = "generator"
        evidence = f"the checkpoint's ID table (round {table.get('round')}) was made by the ID generator"
    else:
        scheme = "title" if initial == "title" and "id" not in order else "generator"
        evidence = (
            f"run config: idgenrec.initial_ids = {initial!r}, order = {order} (table stats say nothing)"
        )
    return {"scheme": scheme, "title_words": int(section.get("title_words", 3)), "round": table.get("round"),
            "initial_ids": initial, "order": order, "evidence": evidence}  # fmt: skip


def item_texts(dataset_dir: str | Path) -> dict[str, str]:
    """item -> its own text for the ID-quality diagnostics: the text and the title, joined."""
    from ..trainer.recipes.idgenrec.data import load_items

    texts, titles = load_items(dataset_dir)
    return {i: t if titles[i] in t else f"{t} {titles[i]}" for i, t in texts.items()}


def title_dataset_table(dataset_dir: str | Path, title_words: int, tokenizer: Any) -> Any:
    """Title IDs for every item of `dataset_dir`, built exactly like training's initial table
    (`title_table`: the first `title_words` title words the run's tokenizer encodes, de-duplicated by
    lengthening, then a number suffix), in items.parquet order."""
    from ..trainer.recipes.idgenrec.data import encodable_fn, load_items, title_table

    _, titles = load_items(dataset_dir)
    return title_table(titles, title_words, encodable_fn(tokenizer))


def heldout_id_table(
    checkpoint: str | Path,
    dataset_dir: str | Path,
    scheme: dict[str, Any],
    idgen: Any = None,
    generator: tuple | None = None,
    tokenizer: Any = None,
    **generate: Any,
) -> Any:
    """IDs of an unseen dataset's items by the scheme the recommender was trained on (`trained_id_scheme`),
    with its quality diagnostics in ``stats["quality"]`` and the scheme in ``stats["scheme"]``.

    `generator` = a preloaded (model, tokenizer) (scheme "generator"); `tokenizer` = the run's tokenizer
    (loaded from the checkpoint when not given); `generate`: store_dir / pool / ray_cfg of
    `generate_dataset_table` (scheme "generator")."""
    if scheme["scheme"] not in ID_SCHEMES:
        raise ValueError(f"ID scheme must be one of {ID_SCHEMES}, got {scheme['scheme']!r}")
    if _prompt_config(checkpoint).use_user_id:  # on the driver, before any actor starts
        raise ValueError(_NO_ZERO_SHOT_USERS.format(checkpoint=checkpoint))
    if scheme["scheme"] == "generator":
        pooled = getattr(generate.get("pool"), "num_actors", 0) > 0  # the actors load their own generator
        if generator is None and not pooled:
            generator = load_id_generator(checkpoint)
        tokenizer = generator[1] if generator is not None else load_checkpoint_tokenizer(checkpoint)
        table = generate_dataset_table(checkpoint, dataset_dir, idgen, generator, **generate)
    else:
        tokenizer = tokenizer if tokenizer is not None else load_checkpoint_tokenizer(checkpoint)
        table = title_dataset_table(dataset_dir, scheme["title_words"], tokenizer)
    quality = table.quality(item_texts(dataset_dir), tokenizer)
    return table.with_stats(scheme=scheme["scheme"], quality=quality)


def training_table_quality(checkpoint: str | Path, corpus: str | Path, tokenizer: Any) -> dict[str, Any]:
    """The diagnostics of the checkpoint's own (training) ID table, on the pretraining corpus' item texts
    (`corpus/items.parquet`; word-in-text shares are left out when it is missing)."""
    from ..trainer.recipes.idgenrec.artefacts import table_from_state

    table = table_from_state(module_state(checkpoint)["table"])
    texts = item_texts(corpus) if (Path(corpus) / "items.parquet").is_file() else None
    return {"version": table.version, "method": table.method, **table.quality(texts, tokenizer)}
