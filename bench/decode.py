"""`fusionrec bench decode`: trie-constrained beam search, ours vs the reference protocol, on Beauty IDs.

Setup: a random tiny T5 (d_model 128, 2+2 layers) with the real T5 tokenizer (../shared/assets/t5-tokenizer),
beam 20, top 20, a trie over all 12,101 Amazon-Beauty items and the test queries of the first users (prompt =
their last 20 history IDs). Until the ID generator's table is wired in, an item's textual ID is the first
three lowercased words of its title, extended word by word (then numbered) until unique.

Lines (one JSON object each):
(a) ``decode-vs-reference``: ours (batched) vs HF ``generate`` + ``prefix_allowed_tokens_fn`` walking a
    dict trie at batch 1 (how IDGenRec/OpenP5 evaluate), users/s; ``match`` = identical top-20 items.
(b) ``decode-vs-hf-same-batch``: the same HF protocol at our batch size (what vectorising the trie buys).
(c) ``decode-constraint-cost``: our constrained vs our unconstrained search at the same batch, ms per
    decoding step (the constraint's cost; the floor is 1.0x, the two runs may take different step counts).
(d) ``decode-mask-share``: ms per step spent in trie expansion + candidate packing vs the whole step.

On a GPU the picture changes in HF's disfavour. A step of this model is microseconds of GPU work, but HF's
constraint is a Python callback per beam per step (20 x batch calls, each walking a dict and building a
list) followed by a host-side mask fill: the GPU idles while the host loops, so the callback dominates and
grows with batch. Our constraint stays on the device: a CSR gather, one scatter into a [batch, candidates]
matrix and a top-k over a few hundred candidates instead of 20 x 32k vocabulary entries. What remains on the
host is one scalar read per step (the widest query's candidate count, to size the packed matrix) and the
stopping test; both are one sync each, and could be removed with a static bound on the candidate count.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BENCH_SHARED = [
    os.environ.get("FUSIONREC_SHARED_DIR", ""),
    str(Path(__file__).resolve().parents[2] / "shared"),
]
BENCH_SHARED.append("/work/shared")
NUM_BEAMS = 20
HISTORY = 20


def _shared_dir() -> Path | None:
    for cand in BENCH_SHARED:
        if cand and (Path(cand) / "data" / "amazon_beauty").is_dir():
            return Path(cand)
    return None


def textual_ids(item_text_file: Path, first_words: int = 3) -> tuple[list[str], list[str], int]:
    """(asins, textual IDs, items needing a longer ID) from `<asin> title: ...` lines, in file order."""
    asins, ids, used, extended = [], [], set(), 0
    for lineno, line in enumerate(item_text_file.read_text(encoding="utf-8").splitlines(), 1):
        asin, _, rest = line.partition(" ")
        if not asin:
            raise ValueError(f"{item_text_file}:{lineno}: empty line")
        title = rest.split("title:", 1)[-1].split(";", 1)[0]
        words = re.findall(r"[a-z0-9]+", title.lower()) or [asin.lower()]
        n = min(first_words, len(words))
        cand = " ".join(words[:n])
        while cand in used and n < len(words):
            n += 1
            cand = " ".join(words[:n])
        suffix = 1
        base = cand
        while cand in used:
            suffix += 1
            cand = f"{base} {suffix}"
        extended += n > first_words or suffix > 1
        used.add(cand)
        asins.append(asin)
        ids.append(cand)
    return asins, ids, extended


def _queries(seq_file: Path, asin_to_id: dict[str, str], n_users: int) -> list[str]:
    prompts = []
    for line in seq_file.read_text(encoding="utf-8").splitlines()[:n_users]:
        items = line.split()[1:]
        history = [asin_to_id[a] for a in items[:-1][-HISTORY:]]
        prompts.append("User purchase history: " + " ; ".join(history) + " . Predict the next item.")
    return prompts


TINY = {"d_model": 128, "d_ff": 512, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4}


def _model(vocab_size: int, pad: int, eos: int, shape: dict | None = None):
    """A random T5 of `shape` (default TINY; bench gpu: t5-small's), seeded."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    shape = shape or TINY
    cfg = T5Config(
        vocab_size=vocab_size, d_kv=shape["d_model"] // shape["num_heads"], **shape,
        pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad,
    )  # fmt: skip
    return T5ForConditionalGeneration(cfg).eval()


def _ours(model, enc, trie, batch: int, timings=None, constrained: bool = True):
    from fusionrec.trainer.decoding import constrained_beam_search

    items, scores, steps = [], [], 0
    for s in range(0, enc["input_ids"].shape[0], batch):
        ids, mask = _trim(enc["input_ids"][s : s + batch], enc["attention_mask"][s : s + batch])
        res = constrained_beam_search(
            model, ids, mask, trie if constrained else None, NUM_BEAMS, NUM_BEAMS,
            max_new_tokens=None if constrained else trie.max_depth, timings=timings,
        )  # fmt: skip
        items.append(res.items)
        scores.append(res.scores)
        steps += res.steps
    return items, scores, steps


def _hf(model, enc, trie, batch: int):
    import torch

    fn = trie.prefix_allowed_tokens_fn()
    items, scores = [], []
    for s in range(0, enc["input_ids"].shape[0], batch):
        ids, mask = _trim(enc["input_ids"][s : s + batch], enc["attention_mask"][s : s + batch])
        out = model.generate(
            input_ids=ids, attention_mask=mask, num_beams=NUM_BEAMS, num_return_sequences=NUM_BEAMS,
            do_sample=False, max_new_tokens=trie.max_depth, prefix_allowed_tokens_fn=fn,
            output_scores=True, return_dict_in_generate=True,
        )  # fmt: skip
        sc = out.sequences_scores.view(-1, NUM_BEAMS)
        found = torch.tensor([trie.lookup(q.tolist()) for q in out.sequences], device=sc.device)
        found = found.view(-1, NUM_BEAMS)
        items.append(torch.where(sc > -1e7, found, -1))
        scores.append(sc)
    return items, scores


def _trim(ids, mask):
    width = int(mask.sum(dim=1).max())
    return ids[:, :width], mask[:, :width]


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def _same(a, b) -> tuple[bool, float]:
    import torch

    items_a, items_b = torch.cat(a[0]).cpu(), torch.cat(b[0]).cpu()
    sa, sb = torch.cat(a[1]).cpu(), torch.cat(b[1]).cpu()
    real = items_b >= 0
    diff = float((sa[real] - sb[real]).abs().max()) if real.any() else 0.0
    return bool(torch.equal(items_a, items_b)), diff


def run(quick: bool = False) -> list[dict]:
    import torch
    from fusionrec.trainer.decoding import CompiledTrie, StepTimings
    from transformers import AutoTokenizer

    shared = _shared_dir()
    tok_dir = shared / "assets" / "t5-tokenizer" if shared else None
    if tok_dir is None or not (tok_dir / "tokenizer.json").exists():
        return [{"bench": "decode", "skipped": "real T5 tokenizer or ../shared/data/amazon_beauty not found"}]
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    n_ref, n_ours, batch = (8, 16, 8) if quick else (48, 96, 16)
    beauty = shared / "data" / "amazon_beauty"
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    asins, ids, extended = textual_ids(beauty / "item_plain_text.txt")
    t0 = time.perf_counter()
    trie = CompiledTrie.from_tokenizer(tok, ids, asins, decoder_start_token_id=tok.pad_token_id)
    build_s = time.perf_counter() - t0
    model = _model(len(tok), tok.pad_token_id, tok.eos_token_id)
    prompts = _queries(beauty / "user_sequence.txt", dict(zip(asins, ids, strict=True)), n_ours)
    enc = tok(prompts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    ref_enc = {k: v[:n_ref] for k, v in enc.items()}
    _ours(model, {k: v[:batch] for k, v in enc.items()}, trie, batch)  # warm-up (allocator, lazy inits)
    _hf(model, {k: v[:1] for k, v in enc.items()}, trie, 1)

    hf1, hf1_s = _timed(_hf, model, ref_enc, trie, 1)
    ours_ref, ours_ref_s = _timed(_ours, model, ref_enc, trie, batch)
    match_a, diff_a = _same(ours_ref[:2], hf1)
    hfb, hfb_s = _timed(_hf, model, ref_enc, trie, batch)
    match_b, _ = _same(ours_ref[:2], hfb)

    t_con, t_unc = StepTimings(), StepTimings()
    (_, _, steps_c), con_s = _timed(_ours, model, enc, trie, batch, t_con)
    (_, _, steps_u), unc_s = _timed(_ours, model, enc, trie, batch, t_unc, constrained=False)
    common = {"items": trie.num_items, "trie_nodes": trie.num_nodes, "beams": NUM_BEAMS, "quick": quick}
    con_step, unc_step = con_s / t_con.steps, unc_s / t_unc.steps
    return [
        {"bench": "decode-vs-reference", "ours": n_ref / ours_ref_s, "baseline": n_ref / hf1_s,
         "ratio": hf1_s / ours_ref_s, "unit": "users/s", "match": match_a,
         "detail": {**common, "users": n_ref, "ours_batch": batch, "baseline_batch": 1,
                    "max_score_diff": diff_a, "ids_extended": extended, "trie_build_s": build_s}},
        {"bench": "decode-vs-hf-same-batch", "ours": n_ref / ours_ref_s, "baseline": n_ref / hfb_s,
         "ratio": hfb_s / ours_ref_s, "unit": "users/s", "match": match_b,
         "detail": {**common, "users": n_ref, "batch": batch}},
        {"bench": "decode-constraint-cost", "ours": 1e3 * con_step, "baseline": 1e3 * unc_step,
         "ratio": con_step / unc_step, "unit": "ms/step",
         "detail": {**common, "users": n_ours, "batch": batch, "constrained_users_per_s": n_ours / con_s,
                    "unconstrained_users_per_s": n_ours / unc_s, "steps": [steps_c, steps_u]}},
        {"bench": "decode-mask-share", "ours": 1e3 * t_con.constraint / t_con.steps,
         "baseline": 1e3 * t_con.total / t_con.steps, "ratio": t_con.constraint / t_con.total, "unit": "ms/step",
         "detail": {**common, "batch": batch, "forward_ms": 1e3 * t_con.forward / t_con.steps,
                    "select_ms": 1e3 * t_con.select / t_con.steps}},
    ]  # fmt: skip


if __name__ == "__main__":
    import json
    import sys

    for line in run(quick="--quick" in sys.argv):
        print(json.dumps(line), flush=True)
