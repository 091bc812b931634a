"""Benchmark: batched diverse ID generation (Algorithm 1) vs IDGenRec's one-item-at-a-time loop.

The baseline is the reference code's protocol (`generate_item_id_from_text` in agiresearch/IDGenRec):
for each item in order, tokenise it alone and call diverse beam search at batch 1, once per attempt,
until an unused ID appears — here with our own DBS (transformers 5 has none), so both sides run the same
search and the ratio measures batching, not a different search. Ours batches every item's first attempt
and re-runs only collided items (`generate_ids`).

Data: the Beauty items (`../shared/data/amazon_beauty/item_plain_text.txt`, 12,101 items), a tiny random
T5 (d_model 64, 2+2 layers, default init: its junk barely depends on the input, the worst case for collisions)
and the real T5 tokenizer (32k vocabulary). Algorithm 1 on a prefix of the items depends on nothing after it,
so the baseline runs on the first `--baseline-items` items and `match` says whether ours gave exactly the same
IDs to them. Ours skips attempts it can prove equal to an earlier one (the stable penalty range); the
baseline runs every attempt, as the reference loop does. `--quick` uses 256 items for both.

    python -m fusionrec.bench.idgen [--quick] [--items N] [--baseline-items M] [--record docs/results/idgen.jsonl]
"""

from __future__ import annotations

import time
from pathlib import Path

from fusionrec.bench import cli_parser, emit, find_shared, provenance
from fusionrec.trainer.idgen.generator import IDGenConfig, assign_ids_sequential, generate_ids
from fusionrec.trainer.models import ModelConfig, build_seq2seq, load_tokenizer


def shared_dir() -> Path:
    found = find_shared("data")
    if found is None:
        raise FileNotFoundError("../shared (Beauty data, T5 tokenizer) not found; set FUSIONREC_SHARED_DIR")
    return found.parent


def load_items(path: Path, limit: int | None = None) -> dict[str, str]:
    """`<item_id> <text>` per line (P5/IDGenRec format), in file order."""
    items: dict[str, str] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            item, _, text = line.rstrip("\n").partition(" ")
            if not item or not text.strip():
                raise ValueError(f"{path}:{lineno}: expected '<item_id> <text>', got {line[:80]!r}")
            items[item] = text
            if limit is not None and len(items) == limit:
                break
    return items


def run(quick: bool = False, items: int | None = None, baseline_items: int = 256) -> list[dict]:
    root = shared_dir()
    n_ours, n_baseline = (256, 256) if quick else (items, baseline_items)
    texts = load_items(root / "data" / "amazon_beauty" / "item_plain_text.txt", n_ours)
    tok = load_tokenizer(root / "assets" / "t5-tokenizer")
    model = build_seq2seq(
        ModelConfig("tiny-t5", d_model=64, d_ff=128, num_heads=2, seed=0), tokenizer=tok
    ).eval()
    line = batched_vs_loop(model, tok, texts, n_baseline, IDGenConfig(batch_size=64))
    return [{"bench": "idgen", **line, **provenance()}]


def batched_vs_loop(
    model, tok, texts: dict[str, str], n_baseline: int, cfg: IDGenConfig, sync=lambda: None
) -> dict:
    """`generate_ids` on all `texts` vs the one-item loop on their first `n_baseline`: items/s, and whether
    the prefix got the same IDs. `sync` waits for the device before each clock read (CUDA: asynchronous)."""
    warm = dict(list(texts.items())[:2])
    generate_ids(model, tok, warm, cfg), assign_ids_sequential(model, tok, warm, cfg)  # first-call costs
    sync()
    start = time.perf_counter()
    ours = generate_ids(model, tok, texts, cfg)
    sync()
    t_ours = time.perf_counter() - start
    prefix = dict(list(texts.items())[:n_baseline])
    start = time.perf_counter()
    base = assign_ids_sequential(model, tok, prefix, cfg)
    sync()
    t_base = time.perf_counter() - start
    ours_rate, base_rate = len(texts) / t_ours, len(prefix) / t_base
    return {
        "ours": round(ours_rate, 2),
        "baseline": round(base_rate, 2),
        "ratio": round(ours_rate / base_rate, 2),
        "unit": "items/s",
        "match": all(ours[k] == base[k] for k in prefix),
        "items": len(texts),
        "baseline_items": len(prefix),
        "ours_seconds": round(t_ours, 1),
        "baseline_seconds": round(t_base, 1),
        "baseline_item_attempts": base.stats["item_attempts_generated"],
        "stats": {k: round(v, 4) if isinstance(v, float) else v for k, v in ours.stats.items()},
    }


def main() -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("--items", type=int, default=None, help="items for ours (default: all 12,101)")
    parser.add_argument("--baseline-items", type=int, default=256, help="prefix the baseline loop runs on")
    args = parser.parse_args()
    emit(run(args.quick, args.items, args.baseline_items), args.record)


if __name__ == "__main__":
    main()
