"""The Fusion corpus (IDGenRec §3.1): many datasets pretrained together, held-out datasets for zero-shot.

Order of operations (each step counted in the dataset's `skipped`):
1. every dataset is preprocessed on its own (k-core etc., preprocess.py);
2. pretraining datasets larger than `user_cap` users are downsampled (seeded per dataset, independent of
   input order and of the other datasets); zero-shot datasets are never downsampled;
3. leakage check on *raw* ids: a zero-shot dataset's item (e.g. the same ASIN in two Amazon categories)
   or user must not occur in the pretraining corpus -> LeakageError, or with `on_leakage="drop"` those
   items/users are removed from the pretraining side (users left with < 3 items are dropped too).
   Item ids are always compared. User ids are compared only between two datasets whose user ids are
   both global (`data.fusion.user_namespace`, config.DatasetPolicy.user_ids): P5 files number users
   u1..uN per file, so "u7" of Toys is not "u7" of Beauty; such per-dataset ids are namespaced by their
   dataset for the check and therefore never collide;
4. ids are namespaced `<dataset>:<id>` everywhere (also for a single dataset), so ids never change meaning
   when datasets are combined; this is where users of different datasets meet in the corpus, and they
   stay distinct whatever their format (a reviewer of two categories is two corpus users).
The cap is a Fusion-pretraining rule: a corpus built without pretrain/zeroshot lists (one dataset, or
the standard-evaluation sets) is never downsampled.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .config import DataConfig, FusionConfig
from .preprocess import MIN_USER_ITEMS, SEQUENCE_SCHEMA, ProcessedDataset


class LeakageError(ValueError):
    """A zero-shot dataset shares raw user or item ids with the pretraining corpus."""


GLOBAL_USERS = "global"


@dataclass
class Corpora:
    """What gets sharded: the main (pretraining) corpus and one corpus per zero-shot dataset."""

    pretrain: list[ProcessedDataset]
    zeroshot: dict[str, ProcessedDataset]


def _flat(ds: ProcessedDataset) -> tuple[np.ndarray, pa.Array, pa.Array]:
    """(user index of every interaction, flat item ids, flat timestamps)."""
    lengths = ds.lengths()
    items = pc.list_flatten(ds.sequences["item_ids"]).combine_chunks()
    stamps = pc.list_flatten(ds.sequences["timestamps"]).combine_chunks()
    return np.repeat(np.arange(len(lengths)), lengths), items, stamps


def keep_interactions(ds: ProcessedDataset, keep: np.ndarray, reason: str) -> ProcessedDataset:
    """Rebuild `ds` from a mask over its flattened interactions (time order is preserved).

    Users left with fewer than 3 items are dropped and counted as `<reason>_short_user`; users left
    with none are simply gone (their removal is what the caller counts). Items no longer referenced
    leave the items table.
    """
    user, items, stamps = _flat(ds)
    per_user = np.bincount(user[keep], minlength=ds.sequences.num_rows)
    short = (per_user > 0) & (per_user < MIN_USER_ITEMS)
    keep = keep & ~short[user]
    kept_users = np.flatnonzero(per_user * ~short > 0)
    offsets = np.zeros(len(kept_users) + 1, dtype=np.int32)
    np.cumsum(per_user[kept_users], out=offsets[1:])
    mask = pa.array(keep)
    sequences = pa.Table.from_arrays(
        [
            ds.sequences["user_id"].take(pa.array(kept_users)),
            pa.ListArray.from_arrays(pa.array(offsets), items.filter(mask)),
            pa.ListArray.from_arrays(pa.array(offsets), stamps.filter(mask)),
        ],
        schema=SEQUENCE_SCHEMA,
    )
    item_table = ds.items.filter(pc.is_in(ds.items["item_id"], value_set=pc.unique(items.filter(mask))))
    skipped = dict(ds.skipped)
    if short.any():
        skipped[f"{reason}_short_user"] = skipped.get(f"{reason}_short_user", 0) + int(short.sum())
    return replace(ds, sequences=sequences, items=item_table, skipped=skipped)


def _dataset_rng(seed: int, name: str) -> np.random.Generator:
    # Per-dataset stream: adding or removing another dataset never changes this one's sample.
    digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, digest]))


def cap_users(ds: ProcessedDataset, cap: int, seed: int) -> ProcessedDataset:
    """Seeded uniform sample of `cap` users (a function of the user ids and seed, not of input order)."""
    n = ds.sequences.num_rows
    if cap == 0 or n <= cap:
        return ds
    by_id = pc.sort_indices(ds.sequences["user_id"]).to_numpy()
    chosen = np.zeros(n, dtype=bool)
    chosen[by_id[_dataset_rng(seed, ds.name).choice(n, size=cap, replace=False)]] = True
    user, _, _ = _flat(ds)
    out = keep_interactions(ds, chosen[user], "user_cap")
    out.skipped["user_cap_users"] = n - cap
    return out


def _prefixed(values: pa.Array, name: str) -> pa.Array:
    return pc.binary_join_element_wise(pa.scalar(f"{name}:"), values, "")


def namespace(ds: ProcessedDataset) -> ProcessedDataset:
    """`<dataset>:<id>` for users and items (sorted order of items is preserved: same prefix)."""
    if ds.namespaced:
        return ds
    seq = ds.sequences
    items = seq["item_ids"].combine_chunks()
    sequences = pa.Table.from_arrays(
        [
            _prefixed(seq["user_id"].combine_chunks(), ds.name),
            pa.ListArray.from_arrays(items.offsets, _prefixed(items.flatten(), ds.name)),
            seq["timestamps"].combine_chunks(),
        ],
        schema=SEQUENCE_SCHEMA,
    )
    item_table = ds.items.set_column(0, "item_id", _prefixed(ds.items["item_id"].combine_chunks(), ds.name))
    return replace(ds, sequences=sequences, items=item_table, namespaced=True)


def find_leakage(
    pretrain: list[ProcessedDataset], held_out: ProcessedDataset, user_ids: dict[str, str] | None = None
) -> dict:
    """Raw ids of `held_out` that occur in any pretraining dataset: {"items": [...], "users": [...],
    "datasets": [pretraining datasets involved], "per_dataset": {name: {"items": set, "users": set}}}
    (lists sorted, for stable messages).

    `user_ids` maps a dataset name to its user-id scope ("global" or "per_dataset"; missing = global):
    users are compared only between two datasets with global ids.
    """
    scope = user_ids or {}
    zs_items = held_out.items["item_id"].combine_chunks()
    zs_users = held_out.sequences["user_id"].combine_chunks()
    items: set[str] = set()
    users: set[str] = set()
    involved = []
    per_dataset: dict[str, dict[str, set[str]]] = {}
    for ds in pretrain:
        hit_i = zs_items.filter(pc.is_in(zs_items, value_set=ds.items["item_id"].combine_chunks()))
        hit_u = zs_users.slice(0, 0)
        if scope.get(held_out.name, GLOBAL_USERS) == scope.get(ds.name, GLOBAL_USERS) == GLOBAL_USERS:
            hit_u = zs_users.filter(pc.is_in(zs_users, value_set=ds.sequences["user_id"].combine_chunks()))
        if len(hit_i) or len(hit_u):
            involved.append(ds.name)
            per_dataset[ds.name] = {"items": set(hit_i.to_pylist()), "users": set(hit_u.to_pylist())}
        items.update(hit_i.to_pylist())
        users.update(hit_u.to_pylist())
    return {"items": sorted(items), "users": sorted(users), "datasets": involved, "per_dataset": per_dataset}


def drop_leaked(ds: ProcessedDataset, users: set[str], items: set[str]) -> ProcessedDataset:
    """Remove the given raw users and items from a pretraining dataset (counted)."""
    user, flat_items, _ = _flat(ds)
    bad_user = pc.is_in(ds.sequences["user_id"], value_set=pa.array(sorted(users), pa.string()))
    bad_user = bad_user.to_numpy(zero_copy_only=False)
    bad_item = pc.is_in(flat_items, value_set=pa.array(sorted(items), pa.string())).to_numpy(
        zero_copy_only=False
    )
    keep = ~bad_user[user] & ~bad_item
    if keep.all():
        return ds
    out = keep_interactions(ds, keep, "leakage")
    out.skipped["leakage_users"] = int(bad_user.sum())
    out.skipped["leakage_interactions"] = int((~keep).sum())
    return out


def _leakage_message(name: str, leak: dict) -> str:
    return (
        f"zero-shot dataset {name!r} leaks into the pretraining corpus ({', '.join(leak['datasets'])}): "
        f"{len(leak['items'])} shared item id(s), e.g. {leak['items'][:5]}; {len(leak['users'])} shared "
        f"user id(s), e.g. {leak['users'][:5]}. Set data.fusion.on_leakage='drop' to remove them from the "
        "pretraining side; if these datasets number their users independently (the same id is not the "
        "same person), set data.fusion.user_namespace='per_dataset' instead"
    )


def check_leakage(
    pretrain: list[ProcessedDataset],
    zeroshot: list[ProcessedDataset],
    cfg: FusionConfig,
    user_ids: dict[str, str] | None = None,
):
    """Raise LeakageError, or (on_leakage="drop") return pretraining datasets without the shared ids.

    `user_ids`: dataset name -> "global" | "per_dataset" (missing = global), see `find_leakage`. A shared
    user is dropped only from the pretraining datasets it was found in.
    """
    drop: dict[str, dict[str, set[str]]] = {}
    for held_out in zeroshot:
        leak = find_leakage(pretrain, held_out, user_ids)
        if not leak["items"] and not leak["users"]:
            continue
        if cfg.on_leakage == "error":
            raise LeakageError(_leakage_message(held_out.name, leak))
        for name, hit in leak["per_dataset"].items():
            into = drop.setdefault(name, {"items": set(), "users": set()})
            into["items"] |= hit["items"]
            into["users"] |= hit["users"]
    if not drop:
        return pretrain
    return [
        drop_leaked(ds, drop[ds.name]["users"], drop[ds.name]["items"]) if ds.name in drop else ds
        for ds in pretrain
    ]


def build_corpora(datasets: dict[str, ProcessedDataset], cfg: DataConfig) -> Corpora:
    """Preprocessed datasets -> the namespaced pretraining corpus and zero-shot corpora."""
    fusion = cfg.fusion
    is_fusion = bool(fusion.pretrain or fusion.zeroshot)
    pretrain = [datasets[n] for n in cfg.pretrain_names()]
    if is_fusion:
        pretrain = [cap_users(ds, fusion.user_cap, fusion.seed) for ds in pretrain]
    zeroshot = [datasets[n] for n in fusion.zeroshot]
    user_ids = {spec.name: cfg.policy(spec).user_ids for spec in cfg.datasets}
    pretrain = check_leakage(pretrain, zeroshot, fusion, user_ids)
    for ds in pretrain:
        if ds.sequences.num_rows == 0:
            raise ValueError(f"dataset {ds.name!r}: no users left after the user cap / leakage removal")
    return Corpora(
        pretrain=[namespace(ds) for ds in pretrain],
        zeroshot={ds.name: namespace(ds) for ds in zeroshot},
    )
