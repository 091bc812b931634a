"""Generative (IDGenRec) evaluation on the Ray actor pool, next to the baselines, from one checkpoint.

`IDGenRecScorerFactory` plugs the trained recommender into `cluster/evaluator.py`: each actor loads the
recommender, tokenizer and ID table once, builds the prefix trie once (over the evaluated dataset's items)
and ranks batches of users with the vectorised trie-constrained beam search of `trainer/decoding`.

Two sources of textual IDs:
- ``id_source="checkpoint"``: the table the checkpoint carries (standard evaluation). Every item of the
  evaluated dataset must be in it; a missing item is a ValueError naming it.
- ``id_source="generate"``: items never seen in training (zero-shot). Their IDs come from the scheme the
  recommender was trained on, built ONCE on the driver (`heldout_id_table`, cluster/heldout_ids.py); the
  table travels to the actors inside the factory. Regenerating it per actor would cost N times the work
  and, with nondeterministic kernels, could give actors different tables.

User IDs (a run trained with ``prompt.use_user_id``): the prompts carry the user ID table the checkpoint
carries, looked up by (user, last history item) — a profile of the items before the evaluated target, so no
test target enters it. Zero-shot users have no such table (``id_source="generate"`` refuses such a run).

Which users a figure covers is always recorded (`users_selection`): all test users, or a seeded sample of N
(generative evaluation is ~1000x slower than a full-ranking baseline, so samples are common).

Reading the checkpoint (tokenizer, ID generator, run section) is cluster/checkpoint_io.py.

GenRec runs (`fusionrec train genrec`) are scored by `GenRecScorerFactory` (cluster/genrec_eval.py) in the
same harness; `evaluate_checkpoint` picks the factory from the run's resolved config (RUN/config.json).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from ..fileio import atomic_write_text
from .checkpoint_io import _offline, _prompt_config, checkpoint_path, module_state
from .evaluator import (
    EvalResult,
    EvalSet,
    EvaluatorConfig,
    UserBatch,
    evaluate,
    plot_results,
    results_csv,
    results_markdown,
)
from .heldout_ids import _NO_ZERO_SHOT_USERS
from .ray_local import RayConfig, check_reachable

ID_SOURCES = ("checkpoint", "generate")


# ------------------------------------------------------------------------------------------------ config


@dataclass
class GenerativeEvalConfig:
    """How the generative model ranks: beam width, list depth, batching, which users."""

    num_beams: int = 20
    top_k: int = 20
    batch_size: int = 32  # users per beam-search call inside an actor
    exclude_history: bool = False  # IDGenRec/P5 protocol: history items may be recommended
    split: str = "test"
    max_users: int = 0  # 0 = every user of the split; N = a seeded sample of N users
    seed: int = 0  # seeds the user sample
    threads: int = 1  # torch threads per actor (one core each: N actors on N cores do not oversubscribe)
    device: str = "cpu"  # where the scorer's model decodes: "cpu" or "cuda[:N]" (one GPU: num_actors = 0)

    def __post_init__(self) -> None:
        if self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"eval.device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        if not 1 <= self.top_k <= self.num_beams:
            raise ValueError(f"eval.top_k={self.top_k} must be in [1, num_beams={self.num_beams}]")
        if self.batch_size < 1 or self.threads < 1:
            raise ValueError(f"eval.batch_size={self.batch_size} and threads={self.threads} must be >= 1")
        if self.split not in ("test", "valid"):
            raise ValueError(f"eval.split must be 'test' or 'valid', got {self.split!r}")
        if self.max_users < 0:
            raise ValueError(f"eval.max_users must be >= 0 (0 = all users), got {self.max_users}")


@dataclass
class EvaluateConfig:
    """`fusionrec evaluate`: the generative scorer, the actor pool, Ray, where results go, baselines."""

    generative: GenerativeEvalConfig = field(default_factory=GenerativeEvalConfig)
    evaluator: EvaluatorConfig = field(default_factory=lambda: EvaluatorConfig(ks=(5, 10, 20)))
    ray: RayConfig = field(default_factory=RayConfig)
    results_dir: str = ""  # "" = RUN/eval of the checkpoint's run
    most_popular: bool = True
    sasrec: dict[str, str] = field(default_factory=dict)  # dataset -> SASRec checkpoint folder

    def __post_init__(self) -> None:
        if max(self.evaluator.ks) > self.generative.top_k:
            raise ValueError(
                f"evaluator.ks={self.evaluator.ks} needs top_k >= {max(self.evaluator.ks)}, "
                f"got generative.top_k={self.generative.top_k}"
            )


def dataset_item_ids(dataset_dir: str | Path) -> list[str]:
    """The item vocabulary of a dataset folder (`items.parquet`, row order) = the EvalSet's index space."""
    path = Path(dataset_dir) / "items.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a processed dataset folder holds items.parquet")
    return pq.read_table(path, columns=["item_id"])["item_id"].to_pylist()


# ------------------------------------------------------------------------------------------------ scorer


class IDGenRecScorer:
    """Ranks users by trie-constrained beam search; returns item indices of the EvalSet's vocabulary.

    `users` (a UserIDTable) is required when `prompt.use_user_id`: user key (user, last history item) → ID.
    """

    def __init__(self, model, tokenizer, table, item_ids: Sequence[str], prompt, cfg: GenerativeEvalConfig,
                 users: Any = None):  # fmt: skip
        from ..trainer.recipes.idgenrec.artefacts import build_trie
        from ..trainer.recipes.idgenrec.data import id_tokens

        if prompt.use_user_id and users is None:
            raise ValueError("prompt.use_user_id is set but the scorer got no user ID table")
        self.users, self.item_ids = (users if prompt.use_user_id else None), list(item_ids)
        missing = [i for i in item_ids if i not in table]
        if missing:
            raise ValueError(
                f"{len(missing)} of {len(item_ids)} evaluated items have no textual ID in ID table "
                f"{table.version}: {missing[:5]}"
            )
        self.model, self.tokenizer, self.prompt, self.cfg = model.eval(), tokenizer, prompt, cfg
        self.model.to(cfg.device)
        self.top_k = cfg.top_k
        # The trie spans the evaluated dataset's items only ("rank over all items" of that dataset), in the
        # table's order; `trie_to_eval` maps its item indices back to the EvalSet's.
        wanted = set(item_ids)
        sub = type(table)({i: t for i, t in table.items() if i in wanted}, table.scheme, table.round)
        self.trie = build_trie(sub, id_tokens(sub, tokenizer), model.config.decoder_start_token_id,
                               tokenizer.eos_token_id).to(cfg.device)  # fmt: skip
        eval_index = {item: i for i, item in enumerate(item_ids)}
        self.trie_to_eval = np.asarray([eval_index[i] for i in self.trie.item_ids], dtype=np.int64)
        self.eval_to_trie = np.asarray(self.trie.indices(list(item_ids)), dtype=np.int64)
        self.textual = [table[i] for i in item_ids]  # eval index -> textual ID (prompt building)
        self.table_version = table.version

    def encode(
        self, histories: Sequence[np.ndarray], users: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The evaluation prompt of each history (IDGenRecCollator's "eval" mode), right-padded; `users` (the
        batch's user ids) are needed when the run uses user IDs."""
        from ..trainer.prompts import build_prompt, cap_history

        texts = []
        for k, hist in enumerate(histories):
            recent = cap_history([self.textual[i] for i in hist], self.prompt.max_history)
            user = self.user_id(users, k, hist) if self.users is not None else None
            texts.append(build_prompt(recent, self.prompt.eval_template, user, style=self.prompt.style).text)
        rows = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.as_tensor(r)
            mask[i, : len(r)] = 1
        return ids, mask

    def user_id(self, users: Sequence[str] | None, k: int, hist: np.ndarray) -> str:
        from ..trainer.prompts import lookup_user_id

        if users is None:
            raise ValueError("this run uses user IDs: encode() needs the batch's user ids")
        last = [self.item_ids[int(hist[-1])]]
        return lookup_user_id(self.users, users[k], last, where=f"user ID table {self.users.version}")

    def rank(self, batch: UserBatch) -> np.ndarray:
        from ..trainer.decoding import constrained_beam_search

        out = np.full((len(batch.histories), self.top_k), -1, dtype=np.int64)
        for lo in range(0, len(batch.histories), self.cfg.batch_size):
            hists = batch.histories[lo : lo + self.cfg.batch_size]
            ids, mask = self.encode(hists, batch.user_ids[lo : lo + self.cfg.batch_size])
            exclude = [self.eval_to_trie[h].tolist() for h in hists] if self.cfg.exclude_history else None
            ids, mask = ids.to(self.cfg.device), mask.to(self.cfg.device)
            res = constrained_beam_search(self.model, ids, mask, self.trie, self.cfg.num_beams, self.top_k,
                                          exclude_items=exclude)  # fmt: skip
            items = res.items.cpu().numpy()
            out[lo : lo + len(hists)] = np.where(items >= 0, self.trie_to_eval[items.clip(min=0)], -1)
        return out


@dataclass
class IDGenRecScorerFactory:
    """Picklable recipe for an actor's scorer: checkpoint + the dataset whose items are ranked.

    `dataset_dir` holds `items.parquet` (the EvalSet's vocabulary, row order). With id_source="generate",
    `id_table` must hold the table built once by `generate_dataset_table` (shipped to the actors).
    """

    checkpoint: str
    dataset_dir: str
    top_k: int = 20
    num_beams: int = 20
    batch_size: int = 32
    exclude_history: bool = False
    id_source: str = "checkpoint"
    id_table: Any = field(default=None, repr=False)  # an IDTable (id_source="generate")
    threads: int = 1
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.id_source not in ID_SOURCES:
            raise ValueError(f"id_source must be one of {ID_SOURCES}, got {self.id_source!r}")
        if self.id_source == "generate" and self.id_table is None:
            raise ValueError("id_source='generate' needs id_table= (built once by generate_dataset_table)")
        if self.id_source == "checkpoint" and self.id_table is not None:
            raise ValueError("id_table is only used with id_source='generate'")
        self.config()  # validate in the driver, before any actor starts

    def config(self) -> GenerativeEvalConfig:
        return GenerativeEvalConfig(self.num_beams, self.top_k, self.batch_size, self.exclude_history,
                                    threads=self.threads, device=self.device)  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """What identifies this scorer in a run fingerprint (the table by version, not by content)."""
        desc = {k: v for k, v in scorer_fields(self).items() if k != "id_table"}
        desc |= checkpoint_identity(self.checkpoint, type(self).__name__)
        desc["id_table"] = self.id_table.version if self.id_table is not None else "checkpoint"
        return desc

    def __call__(self) -> IDGenRecScorer:
        _offline()
        torch.set_num_threads(self.threads)
        from ..trainer.recipes.idgenrec.artefacts import load_idgenrec_for_eval, load_user_table

        module_state(self.checkpoint)  # a checkpoint without its ID table: a clear error, not a KeyError
        model, tokenizer, ckpt_table, _ = load_idgenrec_for_eval(self.checkpoint)
        table = self.id_table if self.id_source == "generate" else ckpt_table
        items = dataset_item_ids(self.dataset_dir)
        prompt = _prompt_config(self.checkpoint)
        users = None
        if prompt.use_user_id:
            if self.id_source == "generate":
                raise ValueError(_NO_ZERO_SHOT_USERS.format(checkpoint=self.checkpoint))
            users = load_user_table(self.checkpoint)
        return IDGenRecScorer(model, tokenizer, table, items, prompt, self.config(), users)


# ------------------------------------------------------------------------------------------------ helpers


def scorer_fields(factory: Any) -> dict[str, Any]:
    """A scorer factory's fields for its run fingerprint. The device joins only when it is not the CPU, so
    result folders of CPU runs written before the field existed stay resumable."""
    fields = dataclasses.asdict(factory)
    return {k: v for k, v in fields.items() if not (k == "device" and v == "cpu")}


def checkpoint_identity(checkpoint: str, scorer_type: str) -> dict[str, Any]:
    """The fields every scorer factory's `describe()` shares: the resolved checkpoint, the scorer type and the
    hash of the checkpoint's COMPLETE marker (a retrained checkpoint at the same path is another scorer)."""
    ckpt = checkpoint_path(checkpoint)
    marker = ckpt / "COMPLETE.json"
    sha = hashlib.sha256(marker.read_bytes()).hexdigest() if marker.exists() else None
    return {"checkpoint": str(ckpt), "type": scorer_type, "checkpoint_marker_sha256": sha}


def sample_users(data: EvalSet, max_users: int, seed: int) -> tuple[EvalSet, dict[str, Any]]:
    """All users (max_users 0 or >= len), or a seeded sample of `max_users` (kept in EvalSet order)."""
    if not max_users or max_users >= len(data):
        return data, {"selection": "all", "users": len(data), "of": len(data)}
    keep = np.sort(np.random.default_rng(seed).choice(len(data), size=max_users, replace=False))
    hist = [data.history(int(i)) for i in keep]
    offsets = np.zeros(len(keep) + 1, dtype=np.int64)
    np.cumsum([len(h) for h in hist], out=offsets[1:])
    sub = EvalSet(data.name, data.item_ids, [data.user_ids[int(i)] for i in keep],
                  np.concatenate(hist).astype(np.int64), offsets, data.targets[keep].copy(), dict(data.skipped))  # fmt: skip
    info = {"selection": f"seeded sample of {max_users}", "users": max_users, "of": len(data), "seed": seed}
    return sub, info


def load_evalset(dataset_dir: str | Path, split: str, name: str | None = None) -> EvalSet:
    """EvalSet of a processed dataset folder (sequences.parquet + items.parquet), leave-one-out."""
    from .baselines import load_corpus

    seqs, vocab, folder = load_corpus(dataset_dir)
    return EvalSet.from_sequences(seqs, split, name or folder, vocab)


def check_ray_address(ray_cfg: RayConfig) -> None:
    """Fail fast (seconds, naming the address) before loading anything when a cluster is unreachable."""
    if ray_cfg.address is not None:
        check_reachable(ray_cfg.address, ray_cfg.connect_timeout_s)


def claim_results_dir(out: Path, identity: dict[str, Any], summaries: str = "results.*") -> None:
    """Tie `out` to one run (checkpoint, data, settings): another run's directory is a clear error; the same
    run's is resumed. Stale summary tables are removed first, so a failed run never leaves a table that
    looks complete."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "run_identity.json"
    text = json.dumps(identity, sort_keys=True, indent=1, default=str)
    if path.exists() and path.read_text() != text:
        raise ValueError(
            f"{out}: results directory belongs to another run ({path} differs: "
            f"{json.loads(path.read_text()).get('checkpoint')} vs {identity.get('checkpoint')}); "
            "use a fresh results_dir or delete it"
        )
    atomic_write_text(path, text)
    for stale in out.glob(summaries):
        stale.unlink()


atomic_write = atomic_write_text  # re-exported for cluster/zeroshot.py


def write_tables(
    out: Path, records: list[dict[str, Any]], stem: str = "results", metric: str = "NDCG@10"
) -> dict:
    """Markdown + CSV + PNG of per-(model, dataset) records, written only once every record exists."""
    paths = {
        "markdown": atomic_write(out / f"{stem}.md", results_markdown(records)),
        "csv": atomic_write(out / f"{stem}.csv", results_csv(records)),
        "png": plot_results(records, out / f"{stem}.png", metric=metric),
    }
    return {k: str(v) for k, v in paths.items()}


def _record(model: str, res: EvalResult, selection: dict, checkpoint: str, config: dict) -> dict[str, Any]:
    """One (model, dataset) result: metrics with their sample size (`users`) and 95% bootstrap intervals."""
    from .results import metric_intervals

    names = [m for m in res.metrics if m.startswith(("HR@", "NDCG@"))]
    return {**res.as_dict(), "intervals": metric_intervals(res.sums, names), "model": model,
            "ranks": res.ranks.tolist(),  # per user, for paired comparisons (cluster.results.paired_difference)
            "users_selection": selection, "checkpoint": checkpoint, "config": config}  # fmt: skip


# ------------------------------------------------------------------------------------------------ entry point


def evaluate_checkpoint(
    checkpoint: str | Path,
    corpus_dir: str | Path,
    cfg: EvaluateConfig | None = None,
    *,
    split: str | None = None,
    num_actors: int | None = None,
    max_users: int | None = None,
    ray_address: str | None = None,
    results_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Evaluate an IDGenRec or GenRec checkpoint on every dataset of a prepared corpus (`OUT/processed/*`) on
    Ray actors, beside most-popular (fit on the same training split) and SASRec (when `cfg.sasrec` names a
    checkpoint). The run's config.json says which recipe trained it; its records are named "idgenrec" or
    "genrec".

    Keyword arguments override the matching `cfg` fields. Writes RESULTS/<dataset>.json (all models of that
    dataset) as each dataset finishes, then RESULTS/results.{md,csv,png}; RESULTS defaults to RUN/eval.
    Returns one record per (model, dataset): metrics, users, users_selection, seconds, users/s, ...
    """
    cfg = _with_overrides(cfg or EvaluateConfig(), split, num_actors, max_users, ray_address, results_dir)
    check_ray_address(cfg.ray)
    ckpt = checkpoint_path(checkpoint)
    _check_checkpoint(ckpt)  # no ID table / vocabulary: fails here, before any actor starts
    corpus = Path(corpus_dir).resolve()
    names = sorted(p.name for p in (corpus / "processed").glob("*") if (p / "sequences.parquet").is_file())
    if not names:
        raise FileNotFoundError(f"{corpus}/processed: no dataset folders with sequences.parquet")
    out = Path(cfg.results_dir) if cfg.results_dir else ckpt.parent.parent / "eval"
    claim_results_dir(
        out, {"checkpoint": str(ckpt), "corpus": str(corpus), "config": dataclasses.asdict(cfg)}
    )
    records: list[dict[str, Any]] = []
    for name in names:
        records += _evaluate_dataset(ckpt, corpus / "processed" / name, name, cfg, out)
    write_tables(out, records)
    return records


def _with_overrides(
    cfg: EvaluateConfig, split, num_actors, max_users, ray_address, results_dir
) -> EvaluateConfig:
    gen = dataclasses.replace(
        cfg.generative, **{k: v for k, v in (("split", split), ("max_users", max_users)) if v is not None}
    )
    ev = (
        dataclasses.replace(cfg.evaluator, num_actors=num_actors) if num_actors is not None else cfg.evaluator
    )
    ray_cfg = dataclasses.replace(cfg.ray, address=ray_address) if ray_address is not None else cfg.ray
    res = str(results_dir) if results_dir is not None else cfg.results_dir
    return dataclasses.replace(cfg, generative=gen, evaluator=ev, ray=ray_cfg, results_dir=res)


def _evaluate_dataset(ckpt: Path, ds_dir: Path, name: str, cfg: EvaluateConfig, out: Path) -> list[dict]:
    from .baselines import SASRecFactory, most_popular_for

    gen = cfg.generative
    full = load_evalset(ds_dir, gen.split, name)
    data, selection = sample_users(full, gen.max_users, gen.seed)
    factories: dict[str, tuple[Any, dict]] = {}
    model, g = _generative_factory(ckpt, ds_dir, gen)
    factories[model] = (g, g.describe())
    if cfg.most_popular:
        f, _ = most_popular_for(
            ds_dir, out / "baselines" / f"most_popular-{name}", gen.top_k, gen.exclude_history
        )
        factories["most_popular"] = (f, dataclasses.asdict(f))
    if name in cfg.sasrec:
        f = SASRecFactory(cfg.sasrec[name], gen.top_k, gen.exclude_history, gen.threads)
        _check_vocab(Path(f.checkpoint) / "id_table.json", full.item_ids)
        factories["sasrec"] = (f, dataclasses.asdict(f))
    records = []
    for model, (factory, desc) in factories.items():
        res = evaluate(data, factory, cfg.evaluator, scorer_desc=desc, results_dir=out / "units" / name / model,
                       ray_cfg=cfg.ray)  # fmt: skip
        records.append(_record(model, res, selection, str(ckpt), dataclasses.asdict(gen)))
    records.append(_random_record(data, name, selection, cfg))
    doc = {"dataset": name, "split": gen.split, "users_selection": selection, "complete": True,
           "finished_unix": time.time(), "results": records}  # fmt: skip
    atomic_write(out / f"{name}.json", json.dumps(doc, indent=2, sort_keys=True, default=str))
    return records


def _check_checkpoint(ckpt: Path) -> None:
    """The checkpoint carries what its scorer needs (IDGenRec: the ID table; GenRec: the vocabulary and a
    valid [genrec] section to rebuild the model and tokenizer from)."""
    from .genrec_eval import genrec_section, genrec_vocab, run_recipe

    if run_recipe(ckpt) == "genrec":
        genrec_vocab(ckpt)
        genrec_section(ckpt)
    else:
        module_state(ckpt)


def _generative_factory(ckpt: Path, ds_dir: Path, gen: GenerativeEvalConfig) -> tuple[str, Any]:
    """(record model name, scorer factory) of the recipe that trained the run (RUN/config.json's section)."""
    from .genrec_eval import GenRecScorerFactory, run_recipe

    genrec = run_recipe(ckpt) == "genrec"
    factory = GenRecScorerFactory if genrec else IDGenRecScorerFactory
    scorer = factory(str(ckpt), str(ds_dir), gen.top_k, gen.num_beams, gen.batch_size, gen.exclude_history,
                     threads=gen.threads, device=gen.device)  # fmt: skip
    return ("genrec" if genrec else "idgenrec"), scorer


def _random_record(data: EvalSet, name: str, selection: dict, cfg: EvaluateConfig) -> dict[str, Any]:
    """A uniformly random ranking of the same users, exactly (an expectation: no interval, no scoring)."""
    from .results import random_ranking_metrics

    metrics = random_ranking_metrics(data, cfg.evaluator.ks, cfg.generative.exclude_history)
    return {"dataset": name, "model": "random (exact)", "metrics": metrics, "users": len(data), "seconds": 0.0,
            "exact": True, "users_selection": selection}  # fmt: skip


def _check_vocab(id_table_json: Path, item_ids: list[str]) -> None:
    if not id_table_json.is_file():
        raise FileNotFoundError(f"{id_table_json}: missing (every checkpoint carries its ID table)")
    theirs = json.loads(id_table_json.read_text())
    if theirs != item_ids:
        raise ValueError(
            f"{id_table_json}: its {len(theirs)} items differ from the dataset's {len(item_ids)} items"
        )
