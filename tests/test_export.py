"""`fusionrec export RUN_OR_CHECKPOINT --out DIR` on real tiny runs: the IDGenRec run shared with
test_zeroshot.py / test_generative_eval.py (trained once per pytest session) and a one-step PALR run on the
same corpus. The exported folders must load with plain transformers (`from_pretrained`) and hold exactly the
checkpoint's weights - read independently from the DeepSpeed checkpoint here, LoRA merge recomputed by hand.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fusionrec.launch.cli import main
from fusionrec.launch.config import load_config
from test_zeroshot import build_tiny_run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_run(tmp_path_factory.getbasetemp() / "tiny_idgenrec_run")


def export_cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["export", *(str(a) for a in argv)])
    out, err = capsys.readouterr()
    return code, out, err


def checkpoint_weights(checkpoint: Path, engine: str) -> dict[str, torch.Tensor]:
    from fusionrec.trainer.strategy import DeepspeedStrategy

    return DeepspeedStrategy.consolidated_state_dict(checkpoint, engine)


def assert_same_weights(exported: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    got = exported.state_dict()
    assert set(expected) <= set(got), sorted(set(expected) - set(got))[:5]
    for name, value in expected.items():
        assert torch.equal(got[name].float(), value.float()), name


def test_idgenrec_run_exports_both_models_tokenizer_and_id_table(tiny_run, tmp_path, capsys):
    from fusionrec.trainer.checkpoint import TRAINER_STATE
    from fusionrec.trainer.idgen.id_table import IDTable
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    out, ckpt = tmp_path / "export", tiny_run["checkpoint"]
    code, stdout, err = export_cli(capsys, tiny_run["run"], "--out", out)  # a run dir: its newest checkpoint
    assert code == 0, err
    assert sorted(line.split(":")[0] for line in stdout.splitlines()) == [
        "id_generator", "id_table", "recommender", "tokenizer"
    ]  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == [
        "id_generator",
        "id_table.json",
        "recommender",
        "tokenizer",
    ]

    rec = AutoModelForSeq2SeqLM.from_pretrained(out / "recommender")
    gen = AutoModelForSeq2SeqLM.from_pretrained(out / "id_generator")
    # The recommender trains inside the soft-ID wrapper, whose state dict prefixes its T5 with "model.".
    rec_ckpt = {k.removeprefix("model."): v for k, v in checkpoint_weights(ckpt, "recommender").items()}
    assert_same_weights(rec, rec_ckpt)
    assert_same_weights(gen, checkpoint_weights(ckpt, "id_generator"))
    assert not torch.equal(rec.shared.weight, gen.shared.weight)  # two models, not one saved twice

    text = "user_12 bought: lipstick red; next?"
    ids = AutoTokenizer.from_pretrained(out / "tokenizer")(text)["input_ids"]
    for folder in ("recommender", "id_generator"):  # every model folder is complete on its own
        assert AutoTokenizer.from_pretrained(out / folder)(text)["input_ids"] == ids

    module = torch.load(ckpt / TRAINER_STATE, map_location="cpu", weights_only=True)["module"]
    table = IDTable.load(out / "id_table.json")
    assert table.as_dict() == module["table"]["ids"] and table.hash == module["table"]["sha256"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_checkpoint_form_and_bad_sources(tiny_run, tmp_path, capsys):
    from transformers import AutoModelForSeq2SeqLM

    out = tmp_path / "export"
    code, _, err = export_cli(capsys, "--checkpoint", tiny_run["checkpoint"], "--out", out)
    assert code == 0, err
    gen = AutoModelForSeq2SeqLM.from_pretrained(out / "id_generator")
    assert_same_weights(gen, checkpoint_weights(tiny_run["checkpoint"], "id_generator"))

    code, _, err = export_cli(capsys, tiny_run["run"], "--checkpoint", tiny_run["checkpoint"], "--out", out)
    assert code == 2 and "give the run dir or checkpoint once" in err
    code, _, err = export_cli(capsys, tiny_run["corpus"], "--out", out)
    assert code == 2
    assert err.strip() == (
        f"fusionrec export: error: export: {tiny_run['corpus']} is neither a fusionrec run dir nor a "
        f"checkpoint inside one (missing run.json or config.toml in {tiny_run['corpus']})"
    )


@pytest.fixture(scope="module")
def palr_run(tiny_run, tmp_path_factory) -> Path:
    """One optimizer step of the tiny PALR ranker (LoRA, ZeRO-3) on the tiny corpus's Beauty dataset."""
    run = tmp_path_factory.mktemp("palr") / "run"
    dataset = tiny_run["corpus"] / "processed" / "beauty"
    cmd = [sys.executable, "-m", "fusionrec.launch.cli", "train", "palr", "--config", "palr_tiny", "--nproc", "1",
           f"palr.data_dir={dataset}", f"train.run_dir={run}", "train.max_steps=1", "palr.epochs=1",
           "train.tensorboard=false", "train.progress=false"]  # fmt: skip
    dist_vars = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in dist_vars} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_palr_export_is_the_base_plus_the_trained_lora_delta(palr_run, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "export"
    code, stdout, err = export_cli(capsys, palr_run, "--out", out)
    assert code == 0, err
    assert stdout.strip() == f"ranker: {out / 'ranker'}"
    merged = AutoModelForCausalLM.from_pretrained(out / "ranker").state_dict()
    AutoTokenizer.from_pretrained(out / "ranker")
    assert not any("lora_" in k for k in merged)

    lora = load_config(palr_run / "config.toml").palr.model.lora
    (ckpt,) = (palr_run / "checkpoints").glob("step-*")
    sd = {k.removeprefix("base_model.model."): v for k, v in checkpoint_weights(ckpt, "ranker").items()}
    adapted = 0
    for name, value in merged.items():
        stem = name.removesuffix(".weight")
        if f"{stem}.lora_A.default.weight" not in sd:
            assert torch.equal(value, sd[name]), name
            continue
        a, b = sd[f"{stem}.lora_A.default.weight"], sd[f"{stem}.lora_B.default.weight"]
        assert b.abs().max() > 0, f"{stem}: LoRA B still zero after a step; the check would be vacuous"
        expected = sd[f"{stem}.base_layer.weight"] + (b @ a) * (lora.alpha / lora.rank)
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-6)
        adapted += 1
    assert adapted == 3 * 2  # q, k, v ("qkv" targets) in each of the tiny model's 2 layers


def test_a_recipe_without_exporter_is_named(tmp_path, capsys):
    from fusionrec.launch.config import write_resolved

    run = tmp_path / "run"
    write_resolved(load_config(None, [f"train.run_dir={run}"]), run)
    (run / "run.json").write_text('{"recipe": "toy", "world_size": 1}')
    code, _, err = export_cli(capsys, run, "--out", tmp_path / "x")
    assert code == 2
    assert err.strip() == (
        f"fusionrec export: error: export: {run} is a run of recipe 'toy', which has no exporter "
        "(exportable recipes: dmpo, genrec, idgenrec, palr)"
    )
    assert not (tmp_path / "x").exists()
