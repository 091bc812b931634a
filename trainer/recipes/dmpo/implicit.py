"""Many-shot DMPO preference sets from implicit feedback: interaction sequences without ratings (Amazon Beauty).

The paper's files exist only for Movie and ML-1M and are few-shot (hundreds of prompts). Here every user of a
prepared corpus gives one prompt: the history is the user's items before the positive (the most recent
`max_history`), the positive is the user's next real interaction, and the k negatives are items the user never
interacted with, drawn uniformly (seeded) from the catalogue.

Users are split by a seeded shuffle, never mixed:
* held-out users (`eval_users`) give evaluation pairs: positive = their last item (items[-1]), history =
  items[:-1], one negative; nothing of theirs is trained on;
* training users give DMPO groups: positive = the last item of the training part (items[-3] = items[:-2][-1]),
  history before it; their validation and test items are never used.
The k negatives of a group are nested: the dpo file for k' < k holds the first k' of the same k, so runs at
k = 1, 3, 5 see the same prompts and positives and differ only in negatives (`write_dmpo_files`).

The files use the paper's format and template (with product words), so `fusionrec train dmpo` and the AUC
evaluation read them unchanged; every written record is re-parsed before the file is renamed into place.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fusionrec.fileio import atomic_write_text
from fusionrec.trainer.recipes.dmpo.data import (
    PRODUCT_WORDS,
    CorpusPreferences,
    PreferenceGroup,
    PreferenceRecord,
    load_dmpo_file,
    preference_group,
    render_item,
)

MIN_ITEMS = 4  # a training user needs history (>= 1 item) + positive + the held-back valid and test items


@dataclass
class ImplicitPromptConfig:
    """How many negatives, how much history, how many users on each side of the split."""

    k: int = 5
    max_history: int = 20
    eval_users: int = 1000
    train_users: int = 0  # 0 = every user not held out
    title_words: int = 0  # > 0: titles cut to their first N words (prompt cost; 0 = full titles)
    seed: int = 0
    words: dict[str, str] = field(default_factory=lambda: dict(PRODUCT_WORDS))

    def __post_init__(self) -> None:
        if self.k < 1 or self.max_history < 1:
            raise ValueError(f"k={self.k} and max_history={self.max_history} must be >= 1")
        if self.eval_users < 0 or self.train_users < 0 or self.title_words < 0:
            raise ValueError(
                f"eval_users={self.eval_users}, train_users={self.train_users} and "
                f"title_words={self.title_words} must be >= 0"
            )


def _negatives(rng: random.Random, catalogue: Sequence[str], seen: set[str], titles, pos_title: str, k: int):
    """k distinct items outside the user's sequence whose title differs from the positive's."""
    out: list[str] = []
    while len(out) < k:
        item = catalogue[rng.randrange(len(catalogue))]
        if item not in seen and item not in out and titles[item] != pos_title:
            out.append(item)
    return out


def build_implicit_preferences(
    sequences: Mapping[str, Sequence[str]], titles: Mapping[str, str], cfg: ImplicitPromptConfig
) -> CorpusPreferences:
    """Training groups (k negatives each) and held-out eval pairs from time-ordered sequences (see module doc).

    Users with fewer than 4 items, or whose positive has no title, are counted in `skipped`; history items
    without a title are left out of the prompt and counted."""
    skipped = {"too_short": 0, "positive_no_title": 0, "history_items_no_title": 0}
    if cfg.title_words:
        titles = {i: " ".join(t.split()[: cfg.title_words]) for i, t in titles.items()}
    catalogue = sorted(i for i, t in titles.items() if t)
    rng = random.Random(cfg.seed)
    users = sorted(u for u, s in sequences.items() if len(s) >= MIN_ITEMS)
    skipped["too_short"] = len(sequences) - len(users)
    rng.shuffle(users)
    held, rest = users[: cfg.eval_users], users[cfg.eval_users :]
    rest = rest[: cfg.train_users] if cfg.train_users else rest
    out: dict[str, list[PreferenceGroup]] = {"eval": [], "train": []}
    for side, chosen, k, cut in (("eval", held, 1, 1), ("train", rest, cfg.k, 3)):
        for user in sorted(chosen):
            seq = list(sequences[user])
            pos, history = seq[-cut], seq[:-cut]
            if not titles.get(pos):
                skipped["positive_no_title"] += 1
                continue
            skipped["history_items_no_title"] += sum(not titles.get(i) for i in history)
            negs = [titles[n] for n in _negatives(rng, catalogue, set(seq), titles, titles[pos], k)]
            hist = [render_item(titles[i]) for i in history if titles.get(i)][-cfg.max_history :]
            out[side].append(preference_group(user, hist, titles[pos], negs, cfg.words, rng))
    return CorpusPreferences(out["train"], [g.rows[0] for g in out["eval"]], skipped)


def _row(record: PreferenceRecord, with_rejected: bool = True) -> dict:
    out = [record.chosen, record.rejected] if with_rejected else record.chosen
    return {"instruction": record.prompt.render(), "input": "", "output": out}


def _write_checked(path: Path, rows: list[dict]) -> Path:
    """Write through a temp name, re-parse with the recipe's own loader, then rename into place."""
    tmp = path.with_name(f".{path.name}.check")
    tmp.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    try:
        load_dmpo_file(tmp)
    finally:
        tmp.unlink()
    return atomic_write_text(path, json.dumps(rows, ensure_ascii=False))


def write_dmpo_files(
    prefs: CorpusPreferences, out: str | Path, name: str, ks: Sequence[int], meta: dict
) -> dict:
    """rec_<name>_sft_ranking.json (one pair per group), rec_<name>_dpo_ranking_<k>.json for each k in `ks`
    (the first k negatives of every group, consecutive rows), rec_<name>_eval_ranking.json, and a manifest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    k_max = min(g.k for g in prefs.groups) if prefs.groups else 0
    if any(k < 1 or k > k_max for k in ks):
        raise ValueError(f"ks={list(ks)}: each must be in [1, {k_max}] (negatives per built group)")
    files = {
        "sft": _write_checked(
            out / f"rec_{name}_sft_ranking.json", [_row(g.rows[0], False) for g in prefs.groups]
        )
    }
    for k in ks:
        rows = [_row(r) for g in prefs.groups for r in g.rows[:k]]
        files[f"dpo_{k}"] = _write_checked(out / f"rec_{name}_dpo_ranking_{k}.json", rows)
    files["eval"] = _write_checked(
        out / f"rec_{name}_eval_ranking.json", [_row(r) for r in prefs.eval_records]
    )
    manifest = {"groups": len(prefs.groups), "eval_pairs": len(prefs.eval_records), "skipped": prefs.skipped,
                "files": {k: Path(v).name for k, v in files.items()}, **meta}  # fmt: skip
    atomic_write_text(out / f"rec_{name}_manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def corpus_sequences(dataset_dir: str | Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Time-ordered item sequences per user and item titles ("" where none) of a processed dataset folder."""
    from fusionrec.data_pipeline.records import read_processed

    sequences, titles = read_processed(dataset_dir, "title")
    return sequences, {i: (t or "").strip() for i, t in titles.items()}


def build_files(
    dataset_dir: str | Path, out: str | Path, cfg: ImplicitPromptConfig, ks: Sequence[int]
) -> dict:
    """`fusionrec dmpo-data`: a prepared dataset -> DMPO files for k in `ks` (manifest returned)."""
    sequences, titles = corpus_sequences(dataset_dir)
    prefs = build_implicit_preferences(sequences, titles, cfg)
    meta = {"source": str(Path(dataset_dir).resolve()), "config": asdict(cfg), "ks": list(ks)}
    return write_dmpo_files(prefs, out, Path(dataset_dir).name, ks, meta)
