"""PALR's default retriever: SASRec adapted to the Retriever protocol, supplied by the launch layer.

The 2-rank test runs the real `palr` recipe builder under a real gloo group: rank 0 trains SASRec on the
corpus' training split and saves it, rank 1 waits and loads it; both must hold identical weights and give
identical candidates; a later build in the same run dir reuses the saved SASRec; then the tiny LM ranker
fine-tunes for two steps on examples whose negatives came from SASRec.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from fusionrec.trainer.models.sasrec import SASRec, SASRecConfig
from fusionrec.trainer.recipes.palr.rerank import SASRecRetriever

ITEMS = [f"i{j:02d}" for j in range(16)]


def _sasrec(num_items: int = len(ITEMS)) -> SASRec:
    torch.manual_seed(0)
    return SASRec(SASRecConfig(num_items, max_len=5, hidden=16, num_blocks=1, dropout=0.0)).eval()


@pytest.mark.unit
def test_sasrec_retriever_matches_the_baseline_scorer_with_history_masked():
    from fusionrec.cluster.baselines import SASRecScorer
    from fusionrec.cluster.evaluator import UserBatch

    model = _sasrec()
    histories = [["i03", "i07", "i01", "i04", "i09", "i02", "i11"], ["i05"], ["i00", "i15"]]
    ours = SASRecRetriever(model, ITEMS).retrieve_many(histories, 6)
    rows = [np.asarray([ITEMS.index(i) for i in h]) for h in histories]
    ref = SASRecScorer(model, 6, exclude_history=True).rank(UserBatch(["a", "b", "c"], rows))
    assert ours == [[ITEMS[j] for j in row] for row in ref.tolist()]  # longer than max_len: last 5 items
    assert [SASRecRetriever(model, ITEMS).retrieve(h, 6) for h in histories] == ours
    assert not any(set(c) & set(h) for c, h in zip(ours, histories, strict=True))
    assert len(SASRecRetriever(model, ITEMS).retrieve(["i00"], 100)) == len(ITEMS) - 1  # all but history


@pytest.mark.unit
def test_sasrec_retriever_and_recipe_config_reject_bad_input():
    from fusionrec.trainer.recipes.palr.config import PALRRecipeConfig
    from fusionrec.trainer.recipes.palr.module import PALRModule

    with pytest.raises(ValueError, match="'zz' is not in the SASRec retriever's vocabulary"):
        SASRecRetriever(_sasrec(), ITEMS).retrieve(["i01", "zz"], 3)
    with pytest.raises(ValueError, match="15 item ids for a SASRec of 16 items"):
        SASRecRetriever(_sasrec(), ITEMS[:-1])
    assert PALRRecipeConfig(data_dir="d").retriever == "sasrec"  # the paper's retrieval layer by default
    with pytest.raises(ValueError, match="palr.retriever='bm25'"):
        PALRRecipeConfig(data_dir="d", retriever="bm25")
    with pytest.raises(ValueError, match="retriever_checkpoint is a SASRec folder"):
        PALRRecipeConfig(data_dir="d", retriever="popular", retriever_checkpoint="ckpt")
    with pytest.raises(ValueError, match="built by the launch layer"):
        PALRModule(PALRRecipeConfig(data_dir="d"))


def _corpus(d: Path) -> Path:
    """16 items, 24 users walking the catalogue in steps of 1 or 3 (SASRec has a pattern to learn)."""
    d.mkdir(parents=True)
    seqs = {f"u{u:02d}": [ITEMS[(u + (1 + 2 * (u % 2)) * j) % 16] for j in range(7)] for u in range(24)}
    pq.write_table(pa.table({"item_id": ITEMS, "text": [f"Product {i}" for i in ITEMS]}), d / "items.parquet")
    pq.write_table(
        pa.table({"user_id": list(seqs), "item_ids": list(seqs.values())}), d / "sequences.parquet"
    )
    return d


def _build_twice_and_train(data_dir: str, run_dir: str) -> dict:
    """One rank: build the palr recipe (SASRec trained by rank 0), rebuild (reuse), fine-tune 2 steps."""
    from fusionrec.launch.config import load_config
    from fusionrec.launch.palr_retriever import RETRIEVER_DIR, build_palr
    from fusionrec.trainer.loop import Trainer
    from fusionrec.trainer.strategy import DeepspeedStrategy

    overrides = [f'palr.data_dir="{data_dir}"', 'palr.retriever="sasrec"', "palr.retriever_epochs=2",
                 f'train.run_dir="{run_dir}"', "train.max_steps=2", "train.tensorboard=false",
                 "train.progress=false", "train.checkpoint.save_at_end=false", "palr.palr.finetune_share=0.5",
                 "palr.palr.negatives=3", "palr.palr.tasks.n_targets=2", "train.deepspeed.micro_batch_size=1", "train.deepspeed.zero_stage=0"]  # fmt: skip
    cfg = load_config("palr_tiny", overrides)
    strategy = DeepspeedStrategy(cfg.train.deepspeed)
    strategy.setup()
    module = build_palr(cfg, strategy).module
    saved = Path(run_dir) / RETRIEVER_DIR
    stamp = (saved / "model.safetensors").stat().st_mtime_ns
    strategy.barrier()
    again = build_palr(cfg, strategy).module.retriever  # same run dir: loads, never retrains
    state = Trainer(cfg.train, strategy, module, [], callbacks=[]).fit()
    weights = torch.cat([p.flatten() for p in module.retriever.model.parameters()])
    return {
        "checksum": float(weights.double().abs().sum()),
        "candidates": module.retriever.retrieve_many([["i00", "i01"], ["i03", "i06"]], 5),
        "again": again.retrieve_many([["i00", "i01"], ["i03", "i06"]], 5),
        "retrained": (saved / "model.safetensors").stat().st_mtime_ns != stamp,
        "steps": state.step,
        "retrieval_prompts": sum("candidate list" in p for p in _prompts(module)),
    }


def _prompts(module) -> list[str]:
    tok = module.tokenizer
    return [tok.decode(e.prompt_ids) for e in module.examples]


@pytest.mark.distributed
def test_palr_recipe_trains_sasrec_on_rank0_and_every_rank_uses_it(tmp_path):
    from fusionrec.cluster.baselines import load_sasrec
    from fusionrec.trainer.testing import run_distributed_test

    data = _corpus(tmp_path / "beauty")
    run = tmp_path / "run"
    r0, r1 = run_distributed_test(_build_twice_and_train, world_size=2, data_dir=str(data), run_dir=str(run))
    assert r0["checksum"] == r1["checksum"] > 0 and r0["candidates"] == r1["candidates"]
    assert r0["again"] == r0["candidates"] and not r0["retrained"] and not r1["retrained"]
    assert r0["steps"] == r1["steps"] == 2 and r0["retrieval_prompts"] == 12  # 12 users x 1 retrieval task
    model, ids = load_sasrec(run / "retriever" / "sasrec")
    assert ids == ITEMS  # the corpus vocabulary, trained on items[:-2] only
    assert SASRecRetriever(model, ids).retrieve_many([["i00", "i01"]], 5)[0] == r0["candidates"][0]
    assert (run / "retriever" / "sasrec.train.json").is_file()


@pytest.mark.unit
def test_a_given_retriever_checkpoint_is_only_loaded(tmp_path):
    from fusionrec.cluster.baselines import save_sasrec
    from fusionrec.launch.palr_retriever import sasrec_retriever
    from fusionrec.trainer.recipes.palr.config import PALRRecipeConfig

    model = _sasrec()
    ckpt = save_sasrec(tmp_path / "sasrec", model, ITEMS)
    recipe = PALRRecipeConfig(data_dir=str(tmp_path / "absent"), retriever_checkpoint=str(ckpt))
    got = sasrec_retriever(recipe, tmp_path / "run", strategy=None)  # loading needs no process group
    assert got.retrieve_many([["i02", "i05"]], 4) == SASRecRetriever(model, ITEMS).retrieve_many(
        [["i02", "i05"]], 4
    )
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        sasrec_retriever(
            PALRRecipeConfig(data_dir="d", retriever_checkpoint=str(tmp_path / "empty")), tmp_path, None
        )
    with pytest.raises(ValueError, match="no such SASRec folder"):
        sasrec_retriever(
            PALRRecipeConfig(data_dir="d", retriever_checkpoint=str(tmp_path / "nope")), tmp_path, None
        )
