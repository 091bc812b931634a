"""`fusionrec bench palr_rerank_speed`: PALR re-ranking of 50 candidates per user with SmolLM2-135M on this CPU.

    python -m fusionrec.bench.palr_rerank_speed [--quick] [--users N] [--record docs/results/palr_rerank_speed.jsonl]

Real Beauty test users (seeded random, history = items[:-1] of which the prompt keeps the last 20, titles cut
to 6 words as in `bench/palr.py`), candidates = the top-50 of the co-occurrence retriever on the training
split (no SASRec to train here; the prompt's size is what matters for speed: ~950 prompt + ~650 candidate
tokens). Each user goes through the production path, `rerank_ranks` (tokenise, score, sort).

- ours: `score_candidates` as shipped — the prompt runs once, all 50 candidates run as ONE packed row over
  its KV cache (block-diagonal mask);
- baseline (same run, first `baseline_users` users): the previous implementation, which repeated the prompt's
  cache 50 times and ran the candidates as a right-padded batch of 50 (`_score_repeated_cache`, kept here
  verbatim), swapped into the same `rerank_ranks`; its ranks must equal ours (`same_ranks`);
- a bf16 line: ours in bfloat16 (AVX512-BF16 on this CPU) vs ours in float32, with the rank agreement.

tokens/s counts prompt + candidate tokens per user (what the model processes). Threads: torch's, as
`provenance()` reports (run with OMP_NUM_THREADS=1 on the shared 2-core box).
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET_USERS_PER_S = 1.0  # issue 17: "≥ 1 user/s for PALR re-ranking of 50 candidates"


@dataclass(frozen=True)
class Plan:
    users: int
    baseline_users: int
    top_n: int = 50
    title_words: int = 6
    seed: int = 0


FULL = Plan(users=20, baseline_users=4)
QUICK = Plan(users=2, baseline_users=1)


@torch.no_grad()
def _score_repeated_cache(model, prompt_ids, candidate_ids, pad_id):
    """The baseline: `score_candidates` before the packed layout (prompt cache repeated per candidate)."""
    from fusionrec.trainer.llm.scoring import AnswerLogProbs

    first = model(input_ids=torch.tensor([prompt_ids]), use_cache=True, logits_to_keep=1)
    cache = first.past_key_values
    n_cand, width, plen = len(candidate_ids), max(len(c) for c in candidate_ids), len(prompt_ids)
    cache.batch_repeat_interleave(n_cand)
    cand = torch.full((n_cand, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n_cand, width), dtype=torch.bool)
    for row, ids in enumerate(candidate_ids):
        cand[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = True
    attention = torch.cat([torch.ones((n_cand, plen), dtype=torch.long), mask.long()], dim=1)
    positions = torch.arange(plen, plen + width).expand(n_cand, width)
    out = model(input_ids=cand, attention_mask=attention, position_ids=positions, past_key_values=cache)
    logits = torch.cat([first.logits[:, -1:].expand(n_cand, 1, -1), out.logits[:, :-1]], dim=1).float()
    picked = logits.gather(-1, cand.unsqueeze(-1)).squeeze(-1)
    return AnswerLogProbs(token_logp=(picked - torch.logsumexp(logits, dim=-1)) * mask, mask=mask)


def beauty_users(plan: Plan, tmp: Path) -> tuple[list, dict[str, str], object]:
    """(history, target) of seeded random Beauty test users, item text, and the co-occurrence retriever."""
    from fusionrec.bench import find_shared
    from fusionrec.bench.palr import write_processed
    from fusionrec.trainer.recipes.palr.rerank import Cooccurrence

    src = find_shared("data/amazon_beauty/user_sequence.txt")
    if src is None:
        raise FileNotFoundError("../shared/data/amazon_beauty not found")
    sequences, text = write_processed(src.parent, tmp / "beauty", plan.title_words)
    users = sorted(u for u, s in sequences.items() if len(s) >= 3)
    random.Random(plan.seed).shuffle(users)
    picked = [(sequences[u][:-1], sequences[u][-1]) for u in users[: plan.users]]
    return picked, text, Cooccurrence([s[:-2] for s in sequences.values()])


def token_counts(tok, users: list, text: dict[str, str], retriever, cfg) -> int:
    """Prompt + candidate tokens over all users: what the LM processes (same prompts as `rerank_ranks`)."""
    from fusionrec.trainer.recipes.palr.data import palr_answer, palr_prompt

    total = 0
    for history, _ in users:
        cands = retriever.retrieve(history, cfg.top_n)
        prompt = palr_prompt([text[i] for i in history], [text[i] for i in cands], cfg.tasks)
        total += len(tok(prompt)["input_ids"])
        total += sum(len(tok(palr_answer([text[i]]), add_special_tokens=False)["input_ids"]) for i in cands)
    return total


def timed_ranks(model, tok, users: list, text: dict[str, str], retriever, cfg) -> tuple[list, float]:
    from fusionrec.trainer.recipes.palr.rerank import rerank_ranks

    rerank_ranks(model, tok, users[:1], text, retriever, cfg)  # warm-up: first-call allocations, kernels
    t0 = time.perf_counter()
    ranks = rerank_ranks(model, tok, users, text, retriever, cfg)
    return ranks, time.perf_counter() - t0


def _speed_line(name: str, ours: tuple, base: tuple, unit: str, extra: dict) -> dict:
    """ours/base = (ranks, seconds, tokens): users/s of each, ratio, tokens/s and whether the ranks agree."""
    from fusionrec.bench import provenance

    o_ups, b_ups = len(ours[0]) / ours[1], len(base[0]) / base[1]
    agree = sum(a == b for a, b in zip(ours[0], base[0], strict=False)) / len(base[0])
    return {"bench": name, "ours": round(o_ups, 3), "baseline": round(b_ups, 3), "ratio": round(o_ups / b_ups, 2),
            "unit": unit, "users": len(ours[0]), "baseline_users": len(base[0]),
            "ours_s_per_user": round(ours[1] / len(ours[0]), 2), "baseline_s_per_user": round(base[1] / len(base[0]), 2),
            "ours_tokens_per_s": round(ours[2] / ours[1]), "baseline_tokens_per_s": round(base[2] / base[1]),
            "rank_agreement": round(agree, 3), "target_users_per_s": TARGET_USERS_PER_S, **extra, **provenance()}  # fmt: skip


def run(quick: bool = False, n_users: int | None = None) -> list[dict]:
    from fusionrec.trainer.models.causal_lm import CausalLMConfig, build_causal_lm, load_tokenizer
    from fusionrec.trainer.recipes.palr import rerank
    from fusionrec.trainer.recipes.palr.data import PALRConfig, PALRTaskConfig

    plan = QUICK if quick else FULL
    if n_users:
        plan = Plan(users=n_users, baseline_users=min(plan.baseline_users, n_users))
    with tempfile.TemporaryDirectory(prefix="palr-speed-") as tmp:
        try:
            users, text, retriever = beauty_users(plan, Path(tmp))
        except FileNotFoundError as err:
            return [{"bench": "palr-rerank-speed", "skipped": str(err)}]
    lm = CausalLMConfig(name_or_path="smollm2-135m")
    model, tok = build_causal_lm(lm).eval(), load_tokenizer(lm)
    cfg = PALRConfig(top_n=plan.top_n, tasks=PALRTaskConfig(n_targets=1))  # as bench/palr.py's evaluation
    n_tok = token_counts(tok, users, text, retriever, cfg)
    n_tok_base = token_counts(tok, users[: plan.baseline_users], text, retriever, cfg)
    ours = (*timed_ranks(model, tok, users, text, retriever, cfg), n_tok)
    with mock.patch.object(rerank, "score_candidates", _score_repeated_cache):
        base = (*timed_ranks(model, tok, users[: plan.baseline_users], text, retriever, cfg), n_tok_base)
    bf16 = (*timed_ranks(model.to(torch.bfloat16), tok, users, text, retriever, cfg), n_tok)
    common = {"quick": quick, "model": "SmolLM2-135M", "candidates": plan.top_n,
              "prompt_plus_candidate_tokens_per_user": round(n_tok / len(users)), "retriever": "cooccurrence"}  # fmt: skip
    return [
        _speed_line(
            "palr-rerank-speed",
            ours,
            base,
            "users/s (50 candidates; ours: packed candidates over one "
            "prompt cache, baseline: cache repeated per candidate; float32)",
            common,
        ),  # fmt: skip
        _speed_line(
            "palr-rerank-speed-bf16",
            bf16,
            ours,
            "users/s (50 candidates, packed; ours: bfloat16, baseline: float32)",
            common,
        ),  # fmt: skip
    ]


def main() -> None:
    from fusionrec.bench import cli_parser, emit

    parser = cli_parser(__doc__)
    parser.add_argument("--users", type=int, default=None, help=f"users for ours (default {FULL.users})")
    args = parser.parse_args()
    emit(run(args.quick, args.users), args.record)


if __name__ == "__main__":
    sys.exit(main())
