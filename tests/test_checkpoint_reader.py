"""The one checkpoint reader: weights/<engine>.safetensors written at save time, read without DeepSpeed.

* a fresh process in which `import deepspeed` fails loads an IDGenRec checkpoint and scores a user, with the
  same top-k as this process;
* the saved weights equal DeepSpeed's own consolidation (fp32 ZeRO-2); at bf16 ZeRO-2/3 they are the fp32
  master copy, equal to DeepSpeed's consolidation up to bf16 rounding;
* a checkpoint in the layout before weights/ existed (no weights/, marker without it) still loads, equal.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fusionrec.trainer.testing import run_distributed_test
from test_zeroshot import build_tiny_run

_SCORE = """
import json, sys
sys.modules["deepspeed"] = None  # `import deepspeed` raises ImportError in this process
import torch
from fusionrec.data_pipeline.loader import LoaderConfig, ShardDataset
from fusionrec.trainer.recipes.idgenrec.artefacts import RankingConfig, load_idgenrec_for_eval
from fusionrec.trainer.decoding import constrained_beam_search
from fusionrec.trainer.recipes.idgenrec.data import IDGenRecCollator, id_tokens
from fusionrec.trainer.prompts import PromptBuilder, PromptConfig

ckpt, corpus = sys.argv[1], sys.argv[2]
model, tokenizer, table, trie = load_idgenrec_for_eval(ckpt)
sample = next(s for s in ShardDataset(corpus, LoaderConfig(splits=["test"], shuffle=False)) if not s["_pad"])
collate = IDGenRecCollator("eval", tokenizer, PromptBuilder(PromptConfig(), table.as_dict()), id_tokens(table, tokenizer), table.version)
batch = collate([dict(sample)])
with torch.no_grad():
    res = constrained_beam_search(model, batch["input_ids"], batch["attention_mask"], trie, 10, 10)
print(json.dumps({"user": sample["user"], "top": res.items[0].tolist(), "deepspeed": "deepspeed" in sys.modules and sys.modules["deepspeed"] is not None}))
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_run(tmp_path_factory.getbasetemp() / "tiny_idgenrec_run")


def _score_here(ckpt: Path, corpus: Path) -> dict:
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    proc = subprocess.run([sys.executable, "-c", _SCORE, str(ckpt), str(corpus)], capture_output=True,
                          text=True, env=dict(env, OMP_NUM_THREADS="1"), timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_a_fresh_process_without_deepspeed_scores_a_user(tiny_run):
    from fusionrec.trainer.checkpoint_reader import WEIGHTS_DIR

    ckpt = tiny_run["checkpoint"]
    assert sorted(p.name for p in (ckpt / WEIGHTS_DIR).iterdir()) == [
        "id_generator.safetensors", "recommender.safetensors"
    ]  # fmt: skip
    got = _score_here(ckpt, tiny_run["corpus"])
    assert got["deepspeed"] is False and len(got["top"]) == 10
    # The same user ranked in this process through DeepSpeed's own consolidation of the checkpoint.
    assert got["top"] == _top_via_deepspeed(ckpt, tiny_run["corpus"], got["user"])


def _top_via_deepspeed(ckpt: Path, corpus: Path, user: str) -> list[int]:
    from fusionrec.data_pipeline.loader import LoaderConfig, ShardDataset
    from fusionrec.trainer.decoding import constrained_beam_search
    from fusionrec.trainer.prompts import PromptBuilder, PromptConfig
    from fusionrec.trainer.recipes.idgenrec.artefacts import load_idgenrec_for_eval
    from fusionrec.trainer.recipes.idgenrec.data import IDGenRecCollator, id_tokens
    from fusionrec.trainer.strategy import DeepspeedStrategy

    model, tokenizer, table, trie = load_idgenrec_for_eval(ckpt)
    ds_weights = DeepspeedStrategy.consolidated_state_dict(ckpt, "recommender")
    model.load_state_dict({k.removeprefix("model."): v for k, v in ds_weights.items()}, strict=False)
    sample = next(
        s for s in ShardDataset(corpus, LoaderConfig(splits=["test"], shuffle=False)) if s["user"] == user
    )
    builder = PromptBuilder(PromptConfig(), table.as_dict())
    batch = IDGenRecCollator("eval", tokenizer, builder, id_tokens(table, tokenizer), table.version)(
        [dict(sample)]
    )
    with torch.no_grad():
        res = constrained_beam_search(model, batch["input_ids"], batch["attention_mask"], trie, 10, 10)
    return res.items[0].tolist()


@pytest.mark.integration
def test_saved_weights_equal_deepspeeds_consolidation(tiny_run):
    from fusionrec.trainer.checkpoint_reader import read_weights
    from fusionrec.trainer.strategy import DeepspeedStrategy

    for engine in ("recommender", "id_generator"):
        ours, contents = read_weights(tiny_run["checkpoint"], engine)
        theirs = DeepspeedStrategy.consolidated_state_dict(tiny_run["checkpoint"], engine)
        assert contents == "full" and set(theirs) <= set(ours)
        for key, value in theirs.items():
            assert torch.equal(ours[key], value), (engine, key)


@pytest.mark.integration
def test_a_checkpoint_from_before_the_weights_layout_still_loads(tiny_run, tmp_path):
    """The layout of checkpoints written before weights/ existed: DeepSpeed files only, marker without it."""
    from fusionrec.trainer.checkpoint_reader import MARKER, WEIGHTS_DIR, read_weights

    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run, ignore=shutil.ignore_patterns("tensorboard"))
    old = run / "checkpoints" / tiny_run["checkpoint"].name
    shutil.rmtree(old / WEIGHTS_DIR)
    marker = json.loads((old / MARKER).read_text())
    marker["files"] = {k: v for k, v in marker["files"].items() if not k.startswith(f"{WEIGHTS_DIR}/")}
    (old / MARKER).write_text(json.dumps(marker))
    for engine in ("recommender", "id_generator"):
        new_w, _ = read_weights(tiny_run["checkpoint"], engine)
        old_w, contents = read_weights(old, engine)
        assert contents == "full" and all(torch.equal(new_w[k], v) for k, v in old_w.items())
    from fusionrec.trainer.recipes.idgenrec.artefacts import load_idgenrec_for_eval

    old_model, new_model = load_idgenrec_for_eval(old)[0], load_idgenrec_for_eval(tiny_run["checkpoint"])[0]
    new_sd = new_model.state_dict()
    assert all(torch.equal(new_sd[k], v) for k, v in old_model.state_dict().items())


def _bf16_run(root: str, stage: int) -> dict:
    from fusionrec.trainer.callbacks import CheckpointCallback
    from fusionrec.trainer.checkpoint_reader import read_weights
    from fusionrec.trainer.config import DeepSpeedConfig, OptimConfig, TrainConfig
    from fusionrec.trainer.loop import Trainer
    from fusionrec.trainer.recipes.toy.data import ToyBatches, make_reversal
    from fusionrec.trainer.recipes.toy.module import ToySeq2SeqModule
    from fusionrec.trainer.strategy import DeepspeedStrategy

    ds = DeepSpeedConfig(zero_stage=stage, micro_batch_size=4, precision="bf16")
    cfg = TrainConfig(run_dir=root, max_steps=3, tensorboard=False, progress=False, deepspeed=ds,
                      optim=OptimConfig(lr=1e-2))  # fmt: skip
    strategy = DeepspeedStrategy(ds)
    strategy.setup()
    module = ToySeq2SeqModule()
    Trainer(cfg, strategy, module, ToyBatches(make_reversal(32), 4, strategy.rank, strategy.world_size),
            [CheckpointCallback()]).fit()  # fmt: skip
    strategy.barrier()
    if not strategy.is_rank0:
        return {}
    ckpt = Path(root) / "checkpoints" / "step-3"
    ours, contents = read_weights(ckpt, "model")
    theirs = DeepspeedStrategy.consolidated_state_dict(ckpt, "model")
    rounded = {k: v.bfloat16().float() for k, v in ours.items()}
    return {
        "contents": contents,
        "dtypes": sorted({str(v.dtype) for v in ours.values()}),
        # DeepSpeed's zero_to_fp32 gives the bf16 module weights here; ours keep the fp32 master copy
        "same_up_to_bf16": all(torch.equal(rounded[k], v.bfloat16().float()) for k, v in theirs.items()),
        "master_kept": any(not torch.equal(rounded[k], ours[k]) for k in theirs),
        "covered": set(theirs) <= set(ours),
    }


@pytest.mark.distributed
@pytest.mark.parametrize("stage", [2, 3])
def test_bf16_weights_are_the_fp32_master_copy(tmp_path, stage):
    r0, _ = run_distributed_test(_bf16_run, world_size=2, root=str(tmp_path), stage=stage)
    assert r0 == {"contents": "full", "dtypes": ["torch.float32"], "same_up_to_bf16": True, "master_kept": True,
                  "covered": True}  # fmt: skip
