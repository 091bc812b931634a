"""`fusionrec bench quality`: recommendation quality on real Amazon Beauty in one stated budget, resumable by stage.

Stages (each leaves STAGE.json in the bench cache, written atomically; a rerun skips the finished ones, so an
interrupted run resumes: the IDGenRec trainer itself resumes from its last checkpoint and spends only what is
left of its wall-clock budget, `train.max_minutes`):

1. ``corpus``: ../shared/data/amazon_beauty prepared once (P5 format, the papers' exact statistics).
2. ``sasrec``: SASRec-CE (cluster.baselines' loop, the fast Beauty setting); every 2 epochs validation
   NDCG@10 on all validation users picks the state and stops training after 2 checks without gain.
3. ``RECIPE-VARIANT``: `fusionrec train RECIPE --config CONFIG --nproc 2` (2 DeepSpeed ranks; ``--config
   idgenrec_beauty_gpu --nproc 1`` on a GPU) for ``--minutes`` of training wall time, a checkpoint every
   ``--every`` steps. Variants: ``titles`` (IDGenRec's shipped recipe: fixed title IDs, the recommender alone),
   ``idgen`` (IDGenRec's method: the ID generator phase alternating with the recommender, rounds sharing the
   budget) and ``genrec`` (GenRec, genrec_beauty_cpu: BART with user/item ID tokens, one cloze epoch, then
   next-item fine-tuning), ``collab`` (not in the papers: the recommender on collaborative IDs,
   trainer/idgen/collab_ids.py, with 3-item prompts and a decaying lr), ``titles3`` (collab's control: the
   same prompt and schedule on the title IDs), ``collab_hour`` (collab with the lr decayed towards zero
   over the steps an hour holds), ``collab_const`` and ``collab_d256`` (collab's IDs and prompt at a constant
   lr, at d128 and at d256: capacity at one budget; ``collab_d256_lr2e3`` the wide one at half the lr,
   ``collab_ff1024`` d128 with 4x the feed-forward width, ``collab_b256`` / ``collab_b1024`` 256 / 1,024
   clusters per ID level), ``collab256`` (collab on 256 clusters per level). Stages live under the config's
   folder, so a variant of another config trains its own SASRec.
4. ``curve-VARIANT``: every checkpoint scored on ``--valid-users`` seeded validation users (Ray actors, the
   same scorer as the test): valid HR@10 vs training minutes; the best one is selected (never a test user).
   For ``idgen``, the share of items whose ID changed in each ID phase.
5. ``test-VARIANT``: the selected checkpoint, SASRec's selected state, most-popular and a random ranking (exact)
   on ALL test users, full ranking over the 12,101 items, history not masked, no user information beyond the
   history (IDGenRec's prompt holds item IDs only; GenRec's an arbitrary user_<n> token): HR/NDCG@5/10 with
   95% bootstrap intervals over users; paired differences.
6. ``transitions-test``: item-to-item transition counts (cluster/transitions.py: what the last items alone
   predict, no learning) on the same test users, paired with both learned models.

Variants of one recipe run into the same cache (e.g. ``--variant titles`` then ``--variant idgen``, the same
budget) share the SASRec and transitions stages; a later run pairs itself with every earlier variant under
the same ``--cache`` root (any recipe's folder) that scored the same test users (``quality_variants`` lines:
IDGenRec with vs without the ID-generator phase, GenRec beside both, collab vs its title control).

Training minutes are the trainer's own clock (`state.train_seconds`); evaluation seconds are reported apart.
The scoring stages run on ``--actors`` Ray actors (default 2); ``--actors 0 --device cuda`` scores in the
driver on one GPU (``--eval-batch`` users per beam search) and trains SASRec there, and ``--shard-engine
local`` prepares the corpus without Ray Data: a GPU machine without Ray (``--config idgenrec_beauty_gpu
--nproc 1`` trains there; ``bench gpu --suite quality`` is that run, prepared).
``--quick`` is a smoke run (0.5 training minute, 100 validation and 300 test users) that shows nothing.

    python -m fusionrec.bench.quality [--minutes 60] [--variant titles] [--set KEY=VALUE ...] [--actors 2]
        [--device cpu] [--eval-batch 32] [--shard-engine ray] [--record F]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusionrec.bench import cli_parser, emit, find_shared, provenance
from fusionrec.bench.idgenrec_beauty import CONFIG, _env, _prepare
from fusionrec.fileio import atomic_write_text

DATASET = "amazon_beauty"
FULL = {"minutes": 60.0, "every": 2000, "valid_users": 1000, "test_users": 0, "sasrec_epochs": 200}
QUICK = {"minutes": 0.5, "every": 100, "valid_users": 100, "test_users": 300, "sasrec_epochs": 2}


@dataclass(frozen=True)
class Variant:
    """One generative recipe run for the budget: which recipe, its default CPU config, its overrides."""

    recipe: str  # "idgenrec" | "genrec": the `fusionrec train` recipe and the evaluator's model name
    config: str
    overrides: tuple[str, ...]


# The budget, not an epoch count, ends a run: titles trains one long recommender phase; idgen is the same
# recommender alternating with the ID-generator phase (regenerating all 12,101 IDs after each), for as many
# rounds as fit; genrec (paper 000's BART with user/item ID tokens) pretrains one cloze epoch, then fine-tunes
# on next items. idgen's schedule is sized by what each part costs on the 2-core CPU (measured, 2 ranks): no
# pretrained generator exists offline, so a from-scratch one first distils the title table (text -> ID;
# 0.13 s/step, its loss 8.4 -> 3.1 in 2,000 steps at lr 3e-3, 7.5 at the id_lr 1e-4 after 300); an ID step
# costs ~1.55 s (6x a recommender step's 0.27), so an ID phase is 100 steps (the paper: one epoch, 2,050 steps
# here); a regeneration ~80 s on 2 ranks. The recommender trains first (the ID phase learns through its loss).
# the recommender alone, the 3 most recent items in the prompt; then with the lr decayed linearly to 10% over 35k
_SHORT_PROMPT = ("idgenrec.rec_epochs=1000", "idgenrec.prompt.max_history=3")
_SHORT_PROMPT_DECAY = (*_SHORT_PROMPT, "train.optim.total_steps=35000", "train.optim.min_lr_ratio=0.1")
_COLLAB = 'idgenrec.initial_ids="collab"'
VARIANTS = {
    "titles": Variant("idgenrec", CONFIG, ("idgenrec.rec_epochs=1000",)),
    "idgen": Variant(
        "idgenrec",
        CONFIG,
        (
            'idgenrec.order=["rec","id"]',
            "idgenrec.rounds=100",
            "idgenrec.warmup_steps=2000",
            "idgenrec.warmup_lr=3e-3",
            "idgenrec.rec_steps=3000",
            "idgenrec.id_steps=100",
        ),
    ),
    "genrec": Variant("genrec", "genrec_beauty_cpu", ("genrec.finetune_epochs=1000",)),
    # Not in the papers: the recommender on collaborative IDs (trainer/idgen/collab_ids.py, P5-CID/TIGER-style
    # co-occurrence clusters written as words) instead of title words, with the 3 most recent items in the
    # prompt (2.1x faster steps than 20) and the lr decayed linearly to 10% over the ~35k steps an hour holds.
    # Probes (valid HR@10, 1,000 users): 20 items .021-.023 at 4-13 min; 3 items .033-.034 at 4.4-5 min.
    "collab": Variant("idgenrec", CONFIG, (*_SHORT_PROMPT_DECAY, _COLLAB)),
    # The control of collab: its prompt and schedule on the title IDs, so a paired collab-vs-titles3
    # difference is what the IDs alone change (titles vs titles3: what the prompt and schedule change).
    "titles3": Variant("idgenrec", CONFIG, _SHORT_PROMPT_DECAY),
    # collab's IDs and prompt with the lr decayed linearly towards zero over a little more than the ~58k steps
    # an hour held in this session's probes (0.062 s/step: `bench rec_head`), so it never trains at lr 0;
    # collab (session 9: 46,050 steps, 0.078 s/step) decayed to 10% over 35k steps, then ~15 minutes flat at
    # that floor. Not tuned: linear decay to zero over the whole budget is the usual best schedule.
    "collab_hour": Variant(
        "idgenrec",
        CONFIG,
        (
            *_SHORT_PROMPT,
            "train.optim.total_steps=56000",
            "train.optim.min_lr_ratio=0.0",
            _COLLAB,
        ),
    ),
    # Capacity at one budget (not in the papers): collab's IDs and prompt with the lr constant after warmup
    # (a decay set in steps would end at another point of the budget for models of other speeds), at collab's
    # shape (d128, ff256) and at d256/ff1024 (2.3x the step time at 20-item prompts: bench rec_width). The
    # same lr, dropout 0 and 2+2 layers: the width alone differs.
    "collab_const": Variant("idgenrec", CONFIG, (*_SHORT_PROMPT, _COLLAB)),
    "collab_d256": Variant(
        "idgenrec",
        CONFIG,
        (
            *_SHORT_PROMPT,
            _COLLAB,
            "idgenrec.recommender.d_model=256",
            "idgenrec.recommender.d_ff=1024",
        ),
    ),
    # collab_d256 at half the lr (2e-3): its curve at 4e-3 was behind d128's per step, a sign that 4e-3 was
    # too high for twice the width. Capacity at a lower lr, the one other setting probed.
    "collab_d256_lr2e3": Variant(
        "idgenrec",
        CONFIG,
        (
            *_SHORT_PROMPT,
            _COLLAB,
            "idgenrec.recommender.d_model=256",
            "idgenrec.recommender.d_ff=1024",
            "train.optim.lr=2e-3",
        ),
    ),
    # Memorisation capacity at d128 (session 14): the training loss of collab_const is flat from ~1,000 steps
    # (1.62 -> 1.56 over 8,500), which reads as underfitting. TIGER's recommender is d128 with d_ff 1024; ours
    # has d_ff 256. Widening only the feed-forward layers costs far less step time than d256 did.
    "collab_ff1024": Variant(
        "idgenrec",
        CONFIG,
        (*_SHORT_PROMPT, _COLLAB, "idgenrec.recommender.d_ff=1024"),
    ),
    # ID design (session 14): 256 clusters per level instead of 32 (TIGER's codebooks hold 256 codes), so an
    # ID is 2 words on Beauty, not 3-5: shorter targets and prompts, and 8x the ID-word embeddings.
    "collab_b256": Variant(
        "idgenrec",
        CONFIG,
        (*_SHORT_PROMPT, _COLLAB, "idgenrec.collab_branching=256"),
    ),
    # collab_b256 won its probe (+.0094 test HR@10 over collab_const, paired interval above zero): is a finer
    # first level better still? 1,024 clusters of ~12 items, rarer (often multi-token) words.
    "collab_b1024": Variant(
        "idgenrec",
        CONFIG,
        (*_SHORT_PROMPT, _COLLAB, "idgenrec.collab_branching=1024"),
    ),
    # collab (its prompt and its lr decayed to 10% over 35k steps, ~an hour at ~0.1 s/step) on 256 clusters per
    # level: the hour run of what collab_b256's probe found.
    "collab256": Variant(
        "idgenrec", CONFIG, (*_SHORT_PROMPT_DECAY, _COLLAB, "idgenrec.collab_branching=256")
    ),
}
METRICS = ("HR@5", "HR@10", "NDCG@5", "NDCG@10")


def _stage(cache: Path, name: str, fn, *args: Any, params: dict | None = None) -> dict[str, Any]:
    """Run a stage once: its JSON result is the marker that it finished (written last, atomically). `params`
    (e.g. the test-user count) are kept with it; a rerun asking for other params is refused, not served."""
    path = cache / f"{name}.json"
    if path.is_file():
        done = json.loads(path.read_text())
        if params is not None and done.get("_params", params) != params:
            raise ValueError(
                f"{path}: computed with {done['_params']}, this run asks for {params}; "
                "remove the file or use another --cache"
            )
        print(f"[quality] {name}: done before, reusing {path}", file=sys.stderr, flush=True)
        return done
    print(f"[quality] {name} ...", file=sys.stderr, flush=True)
    commit = provenance()["commit"]  # the code that computes this stage (a rerun may reuse it later)
    result = {**fn(*args), "_commit": commit, **({"_params": params} if params is not None else {})}
    atomic_write_text(path, json.dumps(result, indent=1, sort_keys=True))
    return result


# ------------------------------------------------------------------------------------------------ SASRec-CE


def train_sasrec(corpus: Path, out: Path, epochs: int, device: str = "cpu") -> dict[str, Any]:
    """SASRec-CE with validation selection (the retriever's trainer) on `device`; its curve is valid HR@10
    (all validation users) per check, the selected point the state kept (the first best NDCG@10)."""
    from fusionrec.launch.palr_retriever import fast_sasrec_config, train_and_save_sasrec

    summary = train_and_save_sasrec(corpus / "processed" / DATASET, out, epochs, threads=2, device=device)
    cfg = fast_sasrec_config(epochs, threads=2, device=device)
    curve = [{"minutes": p["seconds"] / 60, "epoch": p["epoch"], "HR@10": p["HR@10"], "NDCG@10": p["NDCG@10"]}
             for p in summary["valid_curve"]]  # fmt: skip
    return {"checkpoint": str(out), "train_minutes": summary["seconds"] / 60, "curve": curve,
            "valid_users": summary["valid_users"], "selected": max(curve, key=lambda p: p["NDCG@10"]),
            "epochs": summary["epochs"],
            "setting": f"loss ce, lr {cfg.lr}, batch {cfg.batch_size}, hidden {cfg.hidden}, validation every "
                       f"{cfg.eval_every} epochs, patience {cfg.patience}, device {device}"}  # fmt: skip


# ------------------------------------------------------------------------------------------------ IDGenRec


def recipe_overrides(
    variant: Variant, run_dir: Path, corpus: Path, tokenizer: Path, plan: dict, extra: list[str]
) -> list[str]:
    """The recipe's CPU config run for a wall-clock budget with a checkpoint every `plan["every"]` steps (all
    kept: they are the learning curve); `extra` = the variant's and the user's --set overrides."""
    data = (
        [f'idgenrec.data.corpus="{corpus}"', f'idgenrec.pretrained_tokenizer="{tokenizer}"']
        if variant.recipe == "idgenrec"
        else [f'corpus="{corpus}"']
    )
    return [
        f'train.run_dir="{run_dir}"', *data, "train.progress=false", "train.eval_every=0",
        f"train.max_minutes={plan['minutes']}",
        f"train.checkpoint.every_steps={plan['every']}", "train.checkpoint.keep_last=1000", *extra,
    ]  # fmt: skip


def train_generative(
    run_dir: Path, overrides: list[str], recipe: str, config: str, nproc: int
) -> dict[str, Any]:
    """Train (or resume) the run; the trainer stops all ranks together when the budget is spent."""
    cmd = [sys.executable, "-m", "fusionrec.launch.cli", "train", recipe, "--config", config]
    cmd += ["--nproc", str(nproc)]
    subprocess.run([*cmd, *overrides], check=True, env=_env())
    summary = json.loads((run_dir / "train_summary.json").read_text())
    return {"run_dir": str(run_dir), "overrides": overrides, "steps": summary["step"],
            "train_minutes": summary["train_seconds"] / 60, "samples": summary["samples_seen"]}  # fmt: skip


def id_changes(run_dir: Path) -> list[dict[str, Any]]:
    """Share of items whose textual ID differs between consecutive ID tables (r0 -> r1 -> ...)."""
    from fusionrec.trainer.idgen.id_table import IDTable

    tables = sorted((run_dir / "id_tables").glob("r*.json"), key=lambda p: int(p.name[1:].split("-")[0]))
    out = []
    for old, new in zip(tables, tables[1:], strict=False):
        a, b = IDTable.load(old).as_dict(), IDTable.load(new).as_dict()
        common = set(a) & set(b)
        changed = sum(a[i] != b[i] for i in common)
        out.append({"from": old.name, "to": new.name, "items": len(common),
                    "changed_share": changed / len(common) if common else 0.0})  # fmt: skip
    return out


@dataclass(frozen=True)
class Scoring:
    """Where the scoring stages run: `actors` Ray actors (0 = in this process, no Ray: a bare GPU image), the
    generative model's `device` (one GPU: actors 0, device "cuda") and its `batch` (users per beam search:
    larger on a GPU, where one decoding step of 32 users leaves it idle)."""

    actors: int = 2
    device: str = "cpu"
    batch: int = 32


def _scored(ckpt: Path, corpus: Path, split: str, users: int, out: Path, scoring: Scoring,
            sasrec: str = "") -> list[dict]:  # fmt: skip
    from fusionrec.cluster.generative import EvaluateConfig, GenerativeEvalConfig, evaluate_checkpoint

    shutil.rmtree(out, ignore_errors=True)  # a half-finished earlier attempt of this stage
    gen = GenerativeEvalConfig(device=scoring.device, batch_size=scoring.batch)
    cfg = EvaluateConfig(generative=gen, sasrec={DATASET: sasrec} if sasrec else {})
    cfg.evaluator.progress = False
    return evaluate_checkpoint(ckpt, corpus, cfg, split=split, max_users=users, num_actors=scoring.actors,
                               results_dir=out)  # fmt: skip


def curve(
    run_dir: Path, corpus: Path, users: int, scoring: Scoring, model: str = "idgenrec"
) -> dict[str, Any]:
    """Valid HR@10 of every checkpoint (the same seeded validation users each time); the best is selected."""
    from fusionrec.trainer.checkpoint_reader import list_checkpoints, read_trainer_state

    points = []
    for step, ckpt in list_checkpoints(run_dir / "checkpoints"):
        recs = {r["model"]: r for r in _scored(ckpt, corpus, "valid", users, run_dir / "valid-eval", scoring)}
        ours = recs[model]
        points.append({"step": step, "checkpoint": str(ckpt), "HR@10": ours["metrics"]["HR@10"],
                       "ci95": ours["intervals"]["HR@10"], "users": ours["users"],
                       "minutes": read_trainer_state(ckpt)["state"].get("train_seconds", 0.0) / 60,
                       "most_popular_HR@10": recs["most_popular"]["metrics"]["HR@10"],
                       "eval_seconds": ours["seconds"]})  # fmt: skip
        print(f"[quality] step {step}: valid HR@10 {points[-1]['HR@10']:.4f}", file=sys.stderr, flush=True)
    if not points:
        raise RuntimeError(f"{run_dir}/checkpoints: no complete checkpoint to select from")
    return {"points": points, "selected": select(points), "id_changes": id_changes(run_dir)}


def select(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The checkpoint with the best validation HR@10; a tie goes to the earlier (cheaper) one."""
    return max(points, key=lambda p: (p["HR@10"], -p["step"]))


def score_test_users(
    ckpt: str, corpus: Path, sasrec: str, users: int, out: Path, scoring: Scoring
) -> dict[str, Any]:
    """All test users (or `users`): the selected checkpoint beside SASRec, most-popular and random."""
    records = _scored(Path(ckpt), corpus, "test", users, out, scoring, sasrec)
    return {"records": records}


def transitions_test(corpus: Path, users: int, out: Path, scoring: Scoring) -> dict[str, Any]:
    """The item-to-item transitions baseline (cluster/transitions.py) on the test stage's users (the same
    seeded selection `evaluate_checkpoint` makes), on the same Ray actor pool."""
    from fusionrec.cluster.evaluator import EvaluatorConfig, evaluate
    from fusionrec.cluster.generative import GenerativeEvalConfig, load_evalset, sample_users
    from fusionrec.cluster.results import metric_intervals
    from fusionrec.cluster.transitions import transitions_for

    gen = GenerativeEvalConfig(split="test", max_users=users)
    ds = corpus / "processed" / DATASET
    data, selection = sample_users(load_evalset(ds, "test", DATASET), gen.max_users, gen.seed)
    shutil.rmtree(out, ignore_errors=True)
    factory = transitions_for(ds, out / "model", gen.top_k, gen.exclude_history)
    cfg = EvaluatorConfig(num_actors=scoring.actors, progress=False)
    res = evaluate(data, factory, cfg, scorer_desc={"model": "transitions"}, results_dir=out / "units")
    names = [m for m in res.metrics if m.startswith(("HR@", "NDCG@"))]
    return {"records": [{**res.as_dict(), "model": "transitions", "ranks": res.ranks.tolist(),
                         "intervals": metric_intervals(res.sums, names), "users_selection": selection}]}  # fmt: skip


# ------------------------------------------------------------------------------------------------ lines


def lines(variant: str, plan: dict, sas: dict, train: dict, cur: dict, tst: dict, meta: dict) -> list[dict]:
    """Per model the test line, the paired differences, the learning curves and the ID changes."""
    from fusionrec.cluster.results import paired_difference

    ours = VARIANTS[variant].recipe  # the trained model's name in the evaluator's records

    recs = {r["model"]: r for r in tst["records"]}
    pop = recs["most_popular"]["metrics"]["HR@10"]
    out = []
    for model, rec in recs.items():
        trained = {ours: train["train_minutes"], "sasrec": sas["train_minutes"]}.get(model)
        out.append({"bench": "quality_test", "model": model, "ours": round(rec["metrics"]["HR@10"], 5),
                    "ci95": _round(rec.get("intervals", {}).get("HR@10")), "baseline": round(pop, 5),
                    "unit": "test HR@10, full ranking (baseline: most-popular, same users)",
                    "users": rec["users"], "metrics": {m: round(rec["metrics"][m], 5) for m in METRICS},
                    "intervals": {m: _round(v) for m, v in rec.get("intervals", {}).items() if m in METRICS},
                    "train_minutes": trained and round(trained, 2), "eval_seconds": round(rec["seconds"], 1),
                    **meta})  # fmt: skip
    pairs = [(ours, "sasrec"), (ours, "most_popular"), ("sasrec", "most_popular")]
    pairs += [(m, "transitions") for m in (ours, "sasrec") if "transitions" in recs]
    for a, b in pairs:
        d = paired_difference(recs[a]["ranks"], recs[b]["ranks"], "HR@10")
        out.append(_paired_line("quality_paired", f"{a} vs {b}", d, meta))
    out += _curve_lines(ours, sas, cur, meta)
    return out


def variant_pairs(cache: Path, v: str, tst: dict, users: dict, meta: dict) -> list[dict]:
    """``v`` paired with every other variant whose test stage under the same bench root (any recipe's config
    folder, a smoke ``-quick`` folder only with another) scored the same test users: IDGenRec with vs without
    the ID-generator phase, GenRec beside both. Test HR@10 and NDCG@10, the interval of the difference over
    users; each line names the other run's commit and training minutes (budgets are not checked: say them)."""
    from fusionrec.cluster.results import paired_difference

    ours = next(r for r in tst["records"] if r["model"] == VARIANTS[v].recipe)
    out = []
    for path in sorted(cache.parent.glob("*/test-*.json")):
        other, folder = path.stem.removeprefix("test-"), path.parent
        quick_mismatch = folder.name.endswith("-quick") != cache.name.endswith("-quick")
        if other not in VARIANTS or (other == v and folder == cache) or quick_mismatch:
            continue
        done = json.loads(path.read_text())
        theirs = next((r for r in done["records"] if r["model"] == VARIANTS[other].recipe), None)
        if (
            theirs is None
            or done.get("_params") != users
            or theirs["users_selection"] != ours["users_selection"]
        ):
            print(f"[quality] not paired with {path}: other users", file=sys.stderr, flush=True)
            continue
        train = folder / f"{train_stage(other)}.json"
        minutes = round(json.loads(train.read_text())["train_minutes"], 2) if train.is_file() else None
        label = f"{_run_name(v, cache)} vs {_run_name(other, folder)}"
        for metric in ("HR@10", "NDCG@10"):
            d = paired_difference(ours["ranks"], theirs["ranks"], metric)
            out.append(_paired_line("quality_variants", label, d, meta, metric=metric,
                                    other_commit=done.get("_commit", "not recorded"),
                                    other_train_minutes=minutes))  # fmt: skip
    return out


def train_stage(variant: str) -> str:
    """The training stage's name (its run folder and JSON marker in the stage folder): RECIPE-VARIANT."""
    return f"{VARIANTS[variant].recipe}-{variant}"


def _run_name(variant: str, folder: Path) -> str:
    """The variant, with its stage folder when that is not the variant's default config (a GPU config, -quick)."""
    return variant if folder.name == VARIANTS[variant].config else f"{variant} ({folder.name})"


def _paired_line(bench: str, label: str, d: dict, meta: dict, **extra: Any) -> dict:
    """One line of a paired comparison (`cluster.results.paired_difference` of two models on the same users)."""
    return {"bench": bench, "model": label, "ours": round(d["a"], 5), "baseline": round(d["b"], 5),
            "difference": round(d["difference"], 5), "difference_ci95": _round(d["interval"]), "users": d["users"],
            "unit": f"test {d['metric']} (interval: of ours - baseline, paired over users)", **extra, **meta}  # fmt: skip


def _curve_lines(ours: str, sas: dict, cur: dict, meta: dict) -> list[dict]:
    out = [{"bench": "quality_curve", "model": ours, "ours": round(p["HR@10"], 5), "ci95": _round(p["ci95"]),
            "baseline": round(p["most_popular_HR@10"], 5), "users": p["users"], "step": p["step"],
            "train_minutes": round(p["minutes"], 2), "selected": p["step"] == cur["selected"]["step"],
            "unit": f"valid HR@10 after {p['minutes']:.1f} training min (baseline: most-popular)", **meta}
           for p in cur["points"]]  # fmt: skip
    out += [{"bench": "quality_curve", "model": "sasrec", "ours": round(p["HR@10"], 5), "users": sas["valid_users"],
             "epoch": p["epoch"], "train_minutes": round(p["minutes"], 2),
             "unit": f"valid HR@10 after {p['minutes']:.1f} training min (all validation users)", **meta}
            for p in sas["curve"]]  # fmt: skip
    for c in cur["id_changes"]:
        out.append({"bench": "quality_id_changes", "ours": round(c["changed_share"], 4), "items": c["items"],
                    "unit": f"share of items whose ID changed, {c['from']} -> {c['to']}", **meta})  # fmt: skip
    return out


def _round(v: list[float] | None) -> list[float] | None:
    return [round(x, 5) for x in v] if v else None


# ------------------------------------------------------------------------------------------------ driver


def _parser():
    p = cli_parser(__doc__, "smoke run: 0.5 training minute, 100 validation / 300 test users")
    p.add_argument("--variant", choices=sorted(VARIANTS), default="titles")
    p.add_argument(
        "--minutes", type=float, default=None, help="IDGenRec training budget (wall-clock minutes)"
    )
    p.add_argument("--every", type=int, default=None, help="optimizer steps between checkpoints (the curve)")
    p.add_argument("--valid-users", type=int, default=None)
    p.add_argument("--test-users", type=int, default=None, help="0 = all test users")
    p.add_argument("--set", action="append", default=[], help="a config override for the IDGenRec run")
    p.add_argument("--config", default="", help="the recipe's config (default: the variant's CPU config; "
                   "idgenrec_beauty_gpu on a GPU)")  # fmt: skip
    p.add_argument("--nproc", type=int, default=2, help="training processes (1 per GPU)")
    p.add_argument("--actors", type=int, default=2, help="Ray actors of the scoring stages (0 = in process)")
    p.add_argument(
        "--device",
        default="cpu",
        help="where SASRec trains and the generative model scores (cuda: with --actors 0)",
    )
    p.add_argument("--eval-batch", type=int, default=32, help="users per beam search (256 on a GPU)")
    p.add_argument("--shard-engine", choices=["ray", "local"], default="ray",
                   help="data.shards.engine of the corpus stage (local: no Ray, e.g. on the GPU image)")  # fmt: skip
    p.add_argument("--cache", default="", help="stage folder (default $FUSIONREC_BENCH_DIR/quality)")
    return p


def run(quick: bool = False, argv: list[str] | None = None) -> list[dict]:
    args = _parser().parse_args([*(argv or []), *(["--quick"] if quick else [])])
    beauty = find_shared("data/amazon_beauty/user_sequence.txt")
    t5 = find_shared("assets/t5-tokenizer/tokenizer.json")
    if beauty is None or t5 is None:
        return [
            {"bench": "quality", "skipped": "../shared data/amazon_beauty or assets/t5-tokenizer missing"}
        ]
    plan = dict(QUICK if args.quick else FULL)
    for key in ("minutes", "every", "valid_users", "test_users"):
        plan[key] = getattr(args, key) if getattr(args, key) is not None else plan[key]
    root = Path(args.cache or Path(os.environ.get("FUSIONREC_BENCH_DIR", "runs/bench")) / "quality").resolve()
    v = args.variant
    variant, extra = VARIANTS[v], [*VARIANTS[v].overrides, *args.set]
    config, name = args.config or variant.config, train_stage(v)
    cache = root / (config + ("-quick" if args.quick else ""))  # stages of one recipe and size
    cache.mkdir(parents=True, exist_ok=True)
    meta = {
        "config": config,
        "dataset": DATASET,
        "variant": v,
        "budget_minutes": plan["minutes"],
        "setting": " ".join(extra),
        **provenance(),
    }  # at the start: the code that ran, not the code at the end
    overrides = recipe_overrides(variant, cache / name, root / "corpus", t5.parent, plan, extra)
    _check_config(config, overrides)  # a bad --set fails here, before any training
    corpus = _prepare(beauty.parent, root / "corpus", args.shard_engine)
    sas = _stage(cache, "sasrec", train_sasrec, corpus, cache / "sasrec", plan["sasrec_epochs"], args.device)
    tr = _stage(cache, name, train_generative, cache / name, overrides, variant.recipe, config, args.nproc)
    scoring = Scoring(args.actors, args.device, args.eval_batch)
    cur = _stage(
        cache, f"curve-{v}", curve, cache / name, corpus, plan["valid_users"], scoring, variant.recipe
    )
    users = {"test_users": plan["test_users"]}  # the paired stages must have scored the same users
    tst = _stage(cache, f"test-{v}", score_test_users, cur["selected"]["checkpoint"], corpus, sas["checkpoint"],
                 plan["test_users"], cache / f"test-eval-{v}", scoring, params=users)  # fmt: skip
    trans = _stage(cache, "transitions-test", transitions_test, corpus, plan["test_users"],
                   cache / "transitions-eval", scoring, params=users)  # fmt: skip
    stages = {"sasrec": sas, variant.recipe: tr, "curve": cur, "test": tst, "transitions": trans}
    meta["stage_commits"] = {k: st.get("_commit", "not recorded") for k, st in stages.items()}
    pairs = variant_pairs(cache, v, tst, users, meta)
    tst = {"records": tst["records"] + trans["records"]}
    return lines(v, plan, sas, tr, cur, tst, meta) + pairs


def _check_config(config: str, overrides: list[str]) -> Any:
    from fusionrec.launch.config import load_config

    return load_config(config, overrides)


def main() -> None:
    argv = sys.argv[1:]
    emit(run(argv=argv), _parser().parse_args(argv).record)


if __name__ == "__main__":
    main()
