"""`fusionrec bench dmpo_sweep`: DMPO's learning rate and beta chosen on validation users, never test users.

The FULL DMPO run (`bench dmpo_beauty`, lr 3e-4, beta 0.1, chosen before any measurement) put every k below SFT
on the held-out Beauty pairs. Here, from one SFT model (256 prompts, as there), DMPO k=3 on the same 128
prompts runs once per (lr, beta) of `GRID`; each is scored on validation pairs: the last `n_valid` training
users of the Beauty files (their positive is the item before their held-back valid and test items, against a
never-bought item), users disjoint from the prompts trained on and from the 1,000 held-out users. The setting
with the best validation AUC is then scored on the 1,000 held-out pairs beside SFT, paired on the same pairs
(`dmpo_sweep_auc` lines; `selected` marks it). Validation AUC of every setting, with its interval and its
paired difference to SFT on the same validation pairs, is in the lines too.

    python -m fusionrec.bench.dmpo_sweep [--quick] [--record F]
"""

from __future__ import annotations

import gc
import tempfile
from dataclasses import replace
from pathlib import Path

from fusionrec.bench import cli_parser, emit, find_shared, provenance
from fusionrec.bench.dmpo_beauty import (
    Plan,
    Results,
    base_model,
    cache_dir,
    eval_sets,
    preference_files,
    result_lines,
    score_model,
    train_dmpo,
    train_sft,
)

K = 3
# Lower learning rates keep the policy nearer SFT (the FULL run's 3e-4 / 0.1 is the first); ~8 min each on the
# 2-core Xeon (128 groups of 4 sequences + 300 validation pairs), so three fit one session's CPU time.
GRID = ((3e-4, 0.1), (1e-4, 0.1), (3e-5, 0.1))
FULL = Plan(n_eval=1000, n_paper=0, n_sft=256, n_groups=128)
QUICK = Plan(n_eval=8, n_paper=0, n_sft=4, n_groups=4, log_every=1)
N_VALID = {False: 300, True: 8}
QUICK_GRID = ((3e-4, 0.1), (1e-4, 0.5))


def validation_pairs(files: Path, n_valid: int, n_trained: int) -> list:
    """The last `n_valid` training users' (positive, first negative) pairs: never trained on, never tested."""
    from fusionrec.trainer.recipes.dmpo.data import load_dmpo_file

    records = load_dmpo_file(files / "rec_amazon_beauty_dpo_ranking_1.json")
    if n_valid + n_trained > len(records):
        raise ValueError(
            f"{n_valid} validation users + {n_trained} trained on > {len(records)} training users"
        )
    return records[-n_valid:]


def run(quick: bool = False) -> list[dict]:
    if find_shared("data/amazon_beauty/user_sequence.txt") is None:
        return [{"bench": "dmpo_sweep", "skipped": "../shared/data/amazon_beauty not found"}]
    plan, grid = (QUICK, QUICK_GRID) if quick else (FULL, GRID)
    meta = {"quick": quick, "precision": plan.precision, **provenance()}
    files = preference_files(cache_dir())
    valid = {"beauty_valid": validation_pairs(files, N_VALID[quick], max(plan.n_sft, plan.n_groups))}
    heldout, (base_cfg, tok), res = eval_sets(files, plan), base_model(plan), Results()
    settings, best = {}, None
    with tempfile.TemporaryDirectory(prefix="dmpo-sweep-") as tmp:
        sft_dir = train_sft(base_cfg, tok, files, {**valid, **heldout}, plan, Path(tmp), res)
        for lr, beta in grid:
            name = f"dmpo_k{K}_lr{lr:g}_beta{beta:g}"
            settings[name] = {"lr": lr, "beta": beta}
            model = train_dmpo(K, base_cfg, sft_dir, tok, files, valid, replace(plan, lr=lr), Path(tmp), res,
                          beta=beta, name=name, keep=True)  # fmt: skip
            auc = res.scores[name]["beauty_valid"][0].auc
            if best is None or auc > best[1]:
                best = (name, auc, model)
            del model
            gc.collect()
        # the selected setting, and only it, on the held-out (test) users
        res.scores[best[0]].update(score_model(best[2], tok, heldout, plan))
    return sweep_lines(res, plan, settings, best[0], meta)


def sweep_lines(res: Results, plan: Plan, settings: dict, selected: str, meta: dict) -> list[dict]:
    """bench dmpo_beauty's lines (each DMPO setting paired with SFT per eval set), named dmpo_sweep_*, with
    each setting's lr, beta and whether validation selected it."""
    out = []
    for line in result_lines(res, plan, meta, bench="dmpo_sweep"):
        extra = {**settings.get(line["model"], {}), "selected": line["model"] == selected}
        out.append({**line, **extra})
    return out


def main() -> None:
    args = cli_parser(
        __doc__, "smoke run: 2 settings, 4 prompts, 8 validation and 8 held-out pairs"
    ).parse_args()
    emit(run(quick=args.quick), args.record)


if __name__ == "__main__":
    main()
