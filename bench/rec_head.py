"""`fusionrec bench rec_head`: what does computing only the trie's emitted tokens' logits save per step?

With ``idgenrec.trie_softmax`` the recommender's loss reads only the logit columns of tokens the ID trie emits
(CompiledTrie.emitted_tokens), so the head computes only those (``idgenrec.emitted_head``, the default; the
same loss and gradients, tests/test_idgenrec.py). This runs the real CPU recipe (`fusionrec train idgenrec
--nproc 2`, DeepSpeed bf16, real Beauty) with the emitted-columns head and the full head in the same run, for
both ID schemes bench quality trains: title IDs with 20 history items (the shipped config) and collaborative
IDs with 3 (its ``collab`` variant). Seconds per step exclude start-up (a second, shorter run's time is
subtracted, as in `bench rec_width`). Speed only; what the recipes learn is bench quality's question.

    python -m fusionrec.bench.rec_head [--quick] [--record F]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fusionrec.bench import cli_parser, emit, provenance
from fusionrec.bench.idgenrec_beauty import CONFIG
from fusionrec.bench.rec_width import FULL, MISSING, QUICK, beauty_corpus, seconds_per_step

SCHEMES = {  # name -> overrides of the CPU config (bench quality's titles and collab variants' IDs/prompts)
    "title IDs, 20 items": [],
    "collab IDs, 3 items": ['idgenrec.initial_ids="collab"', "idgenrec.prompt.max_history=3"],
}


def run(quick: bool = False) -> list[dict]:
    found = beauty_corpus()
    if found is None:
        return [{"bench": "rec_head", "skipped": MISSING}]
    corpus, tok = found
    plan, meta = (QUICK if quick else FULL), {"quick": quick, "config": CONFIG, **provenance()}
    out = []
    with tempfile.TemporaryDirectory(prefix="rec-head-") as tmp:
        for k, (scheme, overrides) in enumerate(SCHEMES.items()):
            s = {head: seconds_per_step(corpus, tok, Path(tmp) / f"{k}-{head}",
                                        [*overrides, f"idgenrec.emitted_head={str(head).lower()}"], plan)
                 for head in (True, False)}  # fmt: skip
            out.append({"bench": "rec_head", "model": f"emitted-columns head, {scheme}",
                        "ours": round(s[True], 4), "baseline": round(s[False], 4),
                        "ratio": round(s[True] / s[False], 3), "speedup": round(s[False] / s[True], 3),
                        "steps_timed": plan["steps"] - plan["warm"],
                        "unit": "s/step, 64 samples, 2 ranks bf16 (baseline: the full head, same run)",
                        **meta})  # fmt: skip
    return out


def main() -> None:
    args = cli_parser(__doc__, "smoke run: 12 steps per setting").parse_args()
    emit(run(quick=args.quick), args.record)


if __name__ == "__main__":
    main()
