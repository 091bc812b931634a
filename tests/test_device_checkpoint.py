"""A checkpoint crosses devices (issue 14): saved on CUDA, resumed and scored on the CPU, and the other way.

The SASRec recipe (dropout 0, fp32, TF32 off by torch's default for matmuls) trains 3 steps on one device and
resumes to 6 on the other; the losses equal an uninterrupted 6-step run on the resuming device (up to the
two devices' float rounding), and the final checkpoint scored on the CPU by cluster/'s scorer gives the
validation HR/NDCG@10 the Trainer computed on the resuming device. Each run is its own process, so DeepSpeed
picks its accelerator there. The cpu -> cpu case runs in the default suite: it checks this script (and is
resume == uninterrupted once more) before device time is spent on the CUDA cases.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fusionrec.trainer.testing import run_distributed_test
from test_recipe_precision import _on
from test_sasrec_recipe import _fit, make_sasrec_corpus

CROSS_DEVICE_REL = 1e-4  # fp32 on two devices: summation order differs, nothing else


def _fit_on(device: str, corpus: str, run_dir: str, steps: int, resume: str | None = None) -> dict:
    _on(device)
    out = _fit(corpus, run_dir, steps, resume=resume, extra=('train.deepspeed.precision="fp32"',), dropout=0.0)
    import deepspeed.accelerator

    out["device"] = deepspeed.accelerator.get_accelerator().device_name()
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_sasrec_corpus(tmp_path_factory.mktemp("device_ckpt"))


def _round_trip(saved_on: str, resumed_on: str, corpus: Path, tmp_path: Path) -> None:
    def fit(device: str, run: str, steps: int, resume: str | None = None) -> dict:
        (out,) = run_distributed_test(_fit_on, world_size=1, device=device, corpus=str(corpus),
                                      run_dir=str(tmp_path / run), steps=steps, resume=resume)  # fmt: skip
        assert out["device"] == device
        return out

    full = fit(resumed_on, "full", 6)
    first = fit(saved_on, "split", 3)
    rest = fit(resumed_on, "split", 6, resume="auto")
    assert len(rest["losses"]) == 3 and rest["step"] == 6  # it went on from step 3, not from scratch
    assert first["losses"] + rest["losses"] == pytest.approx(full["losses"], rel=CROSS_DEVICE_REL)

    from fusionrec.cluster.baselines import SASRecScorer, evaluate_in_process, load_corpus, load_sasrec
    from fusionrec.cluster.evaluator import EvalSet

    model, items = load_sasrec(tmp_path / "split" / "checkpoints" / "step-6")  # read on the CPU
    assert next(model.parameters()).device.type == "cpu"
    seqs, vocab, name = load_corpus(corpus / "processed" / "beauty")
    valid = EvalSet.from_sequences(seqs, "valid", name, vocab)
    scored = evaluate_in_process(SASRecScorer(model, 10), valid, (10,)).to_dict()
    (val,) = rest["val"]
    one_user = 1.0 / len(valid)  # a near-tie may fall the other way on the other device
    assert val["val/HR@10"] == pytest.approx(scored["HR@10"], abs=one_user + 1e-9)
    assert val["val/NDCG@10"] == pytest.approx(scored["NDCG@10"], abs=one_user + 1e-6)


@pytest.mark.distributed
def test_checkpoint_saved_and_resumed_on_the_cpu_scores_on_the_cpu(corpus, tmp_path) -> None:
    _round_trip("cpu", "cpu", corpus, tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("saved_on", "resumed_on"), [("cuda", "cpu"), ("cpu", "cuda")])
def test_checkpoint_crosses_between_cuda_and_the_cpu(saved_on, resumed_on, corpus, tmp_path) -> None:
    _round_trip(saved_on, resumed_on, corpus, tmp_path)
