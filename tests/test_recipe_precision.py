"""Recipes in bf16 against fp32, from the same weights on the same batches (issue 14): the first loss agrees
within bf16 rounding and 10 steps lower it. On a CPU both arms run here (DeepSpeed's bf16 path on the CPU, in
the default suite); the `gpu` tests run the bf16 arm on CUDA against the CPU's fp32, each arm in its own
process so that DeepSpeed picks its accelerator there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from fusionrec.trainer.testing import run_distributed_test
from test_idgenrec import fit_idgenrec, make_corpus, make_tokenizer, tiny_config
from test_sasrec_recipe import _fit as fit_sasrec
from test_sasrec_recipe import make_sasrec_corpus

STEPS = 10
BF16_REL = 0.02  # bf16 keeps 8 bits of mantissa: a first loss of a tiny model within 2% of fp32's


def _on(device: str) -> None:
    """Run this process on the CPU even where a GPU is (DeepSpeed reads DS_ACCELERATOR at its import)."""
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        os.environ["DS_ACCELERATOR"] = "cpu"


def _idgenrec(corpus: str, tokenizer: str, run_dir: str, precision: str, device: str) -> list[float]:
    _on(device)
    from fusionrec.trainer.models.tokenizer import TokenizerConfig

    cfg = tiny_config(
        corpus, tokenizer=TokenizerConfig(path=tokenizer), order=["rec"], rounds=1, rec_epochs=50
    )
    _, losses = fit_idgenrec(cfg, run_dir, STEPS, None, precision=precision)
    return [losses[s] for s in sorted(losses)]


def _sasrec(corpus: str, run_dir: str, precision: str, device: str) -> list[float]:
    _on(device)
    return fit_sasrec(corpus, run_dir, STEPS, extra=(f'train.deepspeed.precision="{precision}"',))["losses"]


@pytest.fixture(scope="module")
def idgenrec_data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("precision")
    corpus = make_corpus(root / "corpus")
    return {"corpus": str(corpus), "tokenizer": str(make_tokenizer(corpus, root / "tok"))}


@pytest.fixture(scope="module")
def sasrec_corpus(tmp_path_factory) -> str:
    return str(make_sasrec_corpus(tmp_path_factory.mktemp("sasrec")))


def _arms(fn, tmp_path: Path, bf16_device: str, **kw) -> tuple[list[float], list[float]]:
    (fp32,) = run_distributed_test(
        fn, world_size=1, run_dir=str(tmp_path / "fp32"), precision="fp32", device="cpu", **kw
    )
    (bf16,) = run_distributed_test(fn, world_size=1, run_dir=str(tmp_path / "bf16"), precision="bf16",
                                   device=bf16_device, **kw)  # fmt: skip
    return fp32, bf16


def _check(fp32: list[float], bf16: list[float]) -> None:
    assert len(fp32) == len(bf16) == STEPS
    assert bf16[0] == pytest.approx(fp32[0], rel=BF16_REL)
    assert fp32[-1] < fp32[0] and bf16[-1] < bf16[0]


@pytest.mark.distributed
def test_idgenrec_bf16_on_the_cpu_tracks_fp32(idgenrec_data, tmp_path) -> None:
    _check(*_arms(_idgenrec, tmp_path, "cpu", **idgenrec_data))


@pytest.mark.distributed
def test_sasrec_bf16_on_the_cpu_tracks_fp32(sasrec_corpus, tmp_path) -> None:
    _check(*_arms(_sasrec, tmp_path, "cpu", corpus=sasrec_corpus))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("recipe", ["idgenrec", "sasrec"])
def test_recipe_bf16_on_cuda_tracks_the_cpus_fp32(recipe, idgenrec_data, sasrec_corpus, tmp_path) -> None:
    if recipe == "idgenrec":
        _check(*_arms(_idgenrec, tmp_path, "cuda", **idgenrec_data))
    else:
        _check(*_arms(_sasrec, tmp_path, "cuda", corpus=sasrec_corpus))
