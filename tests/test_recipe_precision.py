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
from test_dmpo import _write_dpo_file
from test_genrec import loo_samples, make_genrec_tokenizer, user_sequences, write_corpus
from test_idgenrec import fit_idgenrec, make_corpus, make_tokenizer, tiny_config
from test_palr import _catalog
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


def _trainer_losses(module, key: str, run_dir: str, precision: str, zero_stage: int, lr: float) -> list[float]:
    """`STEPS` steps of `module` under the Trainer and our strategy; the logged `key` of each step."""
    from fusionrec.trainer.callbacks import HistoryCallback
    from fusionrec.trainer.config import DeepSpeedConfig, OptimConfig, TrainConfig
    from fusionrec.trainer.loop import Trainer
    from fusionrec.trainer.strategy import DeepspeedStrategy

    ds = DeepSpeedConfig(zero_stage=zero_stage, precision=precision, micro_batch_size=4)
    cfg = TrainConfig(run_dir=run_dir, max_steps=STEPS, log_every=1, tensorboard=False, progress=False,
                      deepspeed=ds, optim=OptimConfig(lr=lr))  # fmt: skip
    cfg.checkpoint.save_at_end = False
    history = HistoryCallback()
    strategy = DeepspeedStrategy(ds)
    strategy.setup()
    Trainer(cfg, strategy, module(), [], callbacks=[history]).fit()
    return [m[key] for m in history.logs if key in m]


def _genrec(corpus: str, tok_dir: str, run_dir: str, precision: str, device: str) -> list[float]:
    """GenRec fine-tuning (no cloze phase: one loss scale), ZeRO-2 as in its CPU config."""
    _on(device)
    from fusionrec.trainer.models.seq2seq import ModelConfig
    from fusionrec.trainer.models.tokenizer import load_tokenizer
    from fusionrec.trainer.recipes.genrec.config import GenRecConfig
    from fusionrec.trainer.recipes.genrec.module import build_genrec_module

    gcfg = GenRecConfig(model=ModelConfig(name_or_path="tiny-bart", dropout=0.0, d_model=64, d_ff=128),
                        pretrain_steps=0, pretrain_epochs=0, finetune_steps=STEPS)  # fmt: skip
    module = lambda: build_genrec_module(gcfg, corpus, tokenizer=load_tokenizer(tok_dir))  # noqa: E731
    return _trainer_losses(module, "finetune/loss", run_dir, precision, 2, 3e-3)


def _palr(data_dir: str, run_dir: str, precision: str, device: str) -> list[float]:
    """PALR instruction tuning of the tiny Llama + LoRA under ZeRO-3 (palr_7b's stage)."""
    _on(device)
    from fusionrec.trainer.models.causal_lm import CausalLMConfig
    from fusionrec.trainer.recipes.palr.config import PALRRecipeConfig
    from fusionrec.trainer.recipes.palr.data import PALRConfig, PALRTaskConfig
    from fusionrec.trainer.recipes.palr.module import PALRModule

    tasks = PALRTaskConfig(n_targets=2, swap_prob=0.0)
    recipe = PALRRecipeConfig(data_dir=data_dir, retriever="cooccurrence", epochs=6,
                              model=CausalLMConfig(max_length=1024),
                              palr=PALRConfig(finetune_share=0.4, tasks=tasks))  # fmt: skip
    return _trainer_losses(lambda: PALRModule(recipe), "palr/loss", run_dir, precision, 3, 5e-3)


def _dmpo(dpo_file: str, run_dir: str, precision: str, device: str) -> list[float]:
    """The DMPO stage (k=2, reference precomputed) of the tiny Llama + LoRA under ZeRO-3 (dmpo_7b's)."""
    _on(device)
    from fusionrec.trainer.models.causal_lm import CausalLMConfig
    from fusionrec.trainer.recipes.dmpo.config import DMPOConfig, DMPORecipeConfig
    from fusionrec.trainer.recipes.dmpo.module import DMPOModule

    recipe = DMPORecipeConfig(stage="dmpo", dpo_file=dpo_file, epochs=5, model=CausalLMConfig(max_length=512),
                              dmpo=DMPOConfig(k=2, beta=0.5))  # fmt: skip
    return _trainer_losses(lambda: DMPOModule(recipe), "dmpo/loss", run_dir, precision, 3, 1e-2)


@pytest.fixture(scope="module")
def llm_data(tmp_path_factory) -> dict[str, str]:
    """The PALR processed folder and the DMPO preference file of their own tests."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("llm")
    seqs, text = _catalog(20)
    pq.write_table(pa.table({"item_id": list(text), "text": list(text.values())}), root / "items.parquet")
    pq.write_table(pa.table({"user_id": list(seqs), "item_ids": list(seqs.values())}), root / "sequences.parquet")
    _write_dpo_file(root / "dpo.json", 8, 2)
    return {"palr": str(root), "dmpo": str(root / "dpo.json")}


@pytest.fixture(scope="module")
def genrec_data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("genrec")
    corpus = write_corpus(root / "corpus", loo_samples(user_sequences()))
    return {"corpus": str(corpus), "tok_dir": str(make_genrec_tokenizer(root / "tokenizer"))}


def _recipe_arms(recipe: str, tmp_path: Path, bf16_device: str, llm_data, genrec_data):
    if recipe == "genrec":
        return _arms(_genrec, tmp_path, bf16_device, **genrec_data)
    if recipe == "palr":
        return _arms(_palr, tmp_path, bf16_device, data_dir=llm_data["palr"])
    return _arms(_dmpo, tmp_path, bf16_device, dpo_file=llm_data["dmpo"])


@pytest.fixture(scope="module")
def idgenrec_data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("precision")
    corpus = make_corpus(root / "corpus")
    return {"corpus": str(corpus), "tokenizer": str(make_tokenizer(corpus, root / "tok"))}


@pytest.fixture(scope="module")
def sasrec_corpus(tmp_path_factory) -> str:
    return str(make_sasrec_corpus(tmp_path_factory.mktemp("sasrec")))


def _arms(fn, tmp_path: Path, bf16_device: str, **kw) -> tuple[list[float], list[float]]:
    """(fp32 on the CPU, bf16 on `bf16_device`) losses. With CUDA each arm is its own process (DeepSpeed
    picks its accelerator at import); both on the CPU share one process, one after the other."""
    if bf16_device == "cpu":
        (both,) = run_distributed_test(_both_on_the_cpu, world_size=1, arm=fn, root=str(tmp_path), kw=kw)
        return both
    (fp32,) = run_distributed_test(
        fn, world_size=1, run_dir=str(tmp_path / "fp32"), precision="fp32", device="cpu", **kw
    )
    (bf16,) = run_distributed_test(fn, world_size=1, run_dir=str(tmp_path / "bf16"), precision="bf16",
                                   device=bf16_device, **kw)  # fmt: skip
    return fp32, bf16


def _both_on_the_cpu(arm, root: str, kw: dict) -> tuple[list[float], list[float]]:
    return tuple(arm(run_dir=f"{root}/{p}", precision=p, device="cpu", **kw) for p in ("fp32", "bf16"))


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


@pytest.mark.distributed
@pytest.mark.parametrize("recipe", ["genrec", "palr", "dmpo"])
def test_llm_and_genrec_recipes_bf16_on_the_cpu_track_fp32(recipe, llm_data, genrec_data, tmp_path) -> None:
    fp32, bf16 = _recipe_arms(recipe, tmp_path, "cpu", llm_data, genrec_data)
    _check(fp32, bf16)
    if recipe == "dmpo":  # the policy is the reference at step 0, in either precision
        assert fp32[0] == pytest.approx(0.6931, abs=1e-3) and bf16[0] == pytest.approx(0.6931, abs=1e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("recipe", ["genrec", "palr", "dmpo"])
def test_llm_and_genrec_recipes_bf16_on_cuda_track_the_cpus_fp32(recipe, llm_data, genrec_data, tmp_path) -> None:
    _check(*_recipe_arms(recipe, tmp_path, "cuda", llm_data, genrec_data))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("recipe", ["idgenrec", "sasrec"])
def test_recipe_bf16_on_cuda_tracks_the_cpus_fp32(recipe, idgenrec_data, sasrec_corpus, tmp_path) -> None:
    if recipe == "idgenrec":
        _check(*_arms(_idgenrec, tmp_path, "cuda", **idgenrec_data))
    else:
        _check(*_arms(_sasrec, tmp_path, "cuda", corpus=sasrec_corpus))
