"""`fusionrec bench precision`: what ``train.deepspeed.precision = "auto"`` chooses on this CPU, and what it buys.

The shipped CPU recipes train with ``precision = "auto"`` (trainer/strategy.resolve_precision): bf16 where
oneDNN has bf16 kernels (AMX / AVX512-BF16), fp32 where the CPU would emulate bf16 (AVX2 only). This runs the
real CPU recipe (`fusionrec train idgenrec --nproc 2`, real Beauty) in "auto", in bf16 and in fp32 in the same
run, for both ID schemes bench quality trains (title IDs with 20 history items; collaborative IDs with 3), and
reports seconds per step after warm-up (a shorter run's time subtracted, as in `bench rec_width`) with what
"auto" resolved to and the CPU's capability. Speed only: bf16 and fp32 runs of a recipe learn differently
in the last bits, which bench quality's validation-selected results absorb.

    python -m fusionrec.bench.precision [--quick] [--record F]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fusionrec.bench import cli_parser, emit, provenance
from fusionrec.bench.idgenrec_beauty import CONFIG
from fusionrec.bench.rec_head import SCHEMES
from fusionrec.bench.rec_width import FULL, MISSING, QUICK, beauty_corpus, seconds_per_step


def cpu_capability() -> dict[str, object]:
    """What decides "auto" on this CPU, and torch's name for its vector ISA."""
    import torch
    from fusionrec.trainer.config import DeepSpeedConfig
    from fusionrec.trainer.strategy import DeepspeedStrategy, cpu_has_native_bf16

    resolved = DeepspeedStrategy(
        DeepSpeedConfig(precision="auto")
    ).cfg.precision  # the recipe's own resolution
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_has_native_bf16(),
            "auto_resolves_to": resolved}  # fmt: skip


def run(quick: bool = False) -> list[dict]:
    found = beauty_corpus()
    if found is None:
        return [{"bench": "precision", "skipped": MISSING}]
    corpus, tok = found
    plan = QUICK if quick else FULL
    meta = {"quick": quick, "config": CONFIG, **cpu_capability(), **provenance()}
    out = []
    with tempfile.TemporaryDirectory(prefix="precision-") as tmp:
        for k, (scheme, overrides) in enumerate(SCHEMES.items()):
            s = {p: seconds_per_step(corpus, tok, Path(tmp) / f"{k}-{p}",
                                     [*overrides, f'train.deepspeed.precision="{p}"'], plan)
                 for p in ("auto", "bf16", "fp32")}  # fmt: skip
            for base in ("bf16", "fp32"):
                out.append({"bench": "precision", "model": f"auto vs {base}, {scheme}", "ours": round(s["auto"], 4),
                            "baseline": round(s[base], 4), "ratio": round(s["auto"] / s[base], 3),
                            "steps_timed": plan["steps"] - plan["warm"],
                            "unit": f"s/step, 64 samples, 2 ranks (baseline: {base}, same run)", **meta})  # fmt: skip
    return out


def main() -> None:
    args = cli_parser(__doc__, "smoke run: 12 steps per setting").parse_args()
    emit(run(quick=args.quick), args.record)


if __name__ == "__main__":
    main()
