"""PALR: retrievers (hand-computed), HR/NDCG of re-ranking, training examples, the recipe end to end."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fusionrec.trainer.models.causal_lm import CausalLMConfig, build_ranker
from fusionrec.trainer.recipes.palr.data import PALRConfig, PALRTaskConfig
from fusionrec.trainer.recipes.palr.rerank import (
    Cooccurrence,
    MostPopular,
    _rank_metrics,
    rerank_eval,
    training_examples,
)

SEQS = [["a", "b", "c"], ["a", "b", "d"], ["b", "c"]]


@pytest.mark.unit
def test_most_popular_and_cooccurrence_hand_computed():
    pop = MostPopular(SEQS)  # counts b3 a2 c2 d1, ties broken by id
    assert pop.ranked == ["b", "a", "c", "d"]
    assert pop.retrieve(["b"], 2) == ["a", "c"]
    co = Cooccurrence(SEQS, window=1, recent=1)  # adjacent pairs: ab x2, bc x2, bd x1
    assert co.retrieve(["c"], 3) == ["b", "a", "d"]  # b by co-occurrence, then popularity fills up
    assert co.retrieve(["a", "b"], 2) == ["c", "d"]  # last item b: c(2) > d(1); history excluded


@pytest.mark.unit
def test_rank_metrics_hand_computed():
    m = _rank_metrics(2, (1, 5))
    assert m == {"HR@1": 0.0, "NDCG@1": 0.0, "HR@5": 1.0, "NDCG@5": pytest.approx(1 / math.log2(4))}
    assert _rank_metrics(None, (10,)) == {"HR@10": 0.0, "NDCG@10": 0.0}


def _catalog(n_users: int = 12):
    items = [f"i{j}" for j in range(12)]
    text = {i: f"Product {i}" for i in items}
    seqs = {f"u{u}": [items[(u + j) % 12] for j in range(7)] for u in range(n_users)}
    return seqs, text


@pytest.mark.unit
def test_training_examples_use_share_of_users_and_no_heldout_items():
    seqs = {f"u{u}": [f"u{u}i{j}" for j in range(7)] for u in range(10)}  # disjoint items per user
    text = {i: f"Product {i}" for seq in seqs.values() for i in seq}
    cfg = PALRConfig(finetune_share=0.2, negatives=3, tasks=PALRTaskConfig(n_targets=2, swap_prob=0.0))
    ex = training_examples(seqs, text, MostPopular([s[:-2] for s in seqs.values()]), cfg)
    assert len(ex) == 4  # 2 users x (Recommend, Recommend_Retrieval)
    assert sum("candidate list" in p for p, _ in ex) == 2
    heldout = {f'"{text[s[k]]}"' for s in seqs.values() for k in (-1, -2)}
    assert not any(h in p or h in a for p, a in ex for h in heldout)  # valid/test targets never leak
    for _, ans in ex:
        assert ans.count('"') == 4  # two targets: the 3rd- and 4th-last training items


@pytest.mark.unit
def test_rerank_eval_retriever_metrics_exact_and_recall_preserved():
    seqs, text = _catalog()
    retriever = MostPopular([s[:-2] for s in seqs.values()])
    users = [(s[:-1], s[-1]) for s in list(seqs.values())[:3]]
    cfg = PALRConfig(top_n=5, ks=(1, 5))
    model, tok = build_ranker(CausalLMConfig(max_length=2048))
    out = rerank_eval(model, tok, users, text, retriever, cfg)
    expected = {"HR@1": 0.0, "HR@5": 0.0, "NDCG@1": 0.0, "NDCG@5": 0.0}
    for hist, target in users:
        cands = retriever.retrieve(hist, 5)
        rank = cands.index(target) if target in cands else None
        for k, v in _rank_metrics(rank, (1, 5)).items():
            expected[k] += v / len(users)
    assert out["retriever"] == pytest.approx(expected | {"users": 3.0})
    assert out["llm"]["HR@5"] == pytest.approx(expected["HR@5"])  # re-ranking cannot change recall@top_n


@pytest.mark.integration
def test_palr_recipe_trains_on_processed_folder(tmp_path):
    from fusionrec.trainer.config import DeepSpeedConfig, OptimConfig, TrainConfig
    from fusionrec.trainer.loop import Trainer
    from fusionrec.trainer.recipes.palr.config import PALRRecipeConfig
    from fusionrec.trainer.recipes.palr.module import PALRModule
    from fusionrec.trainer.strategy import DeepspeedStrategy

    seqs, text = _catalog(20)
    pq.write_table(pa.table({"item_id": list(text), "text": list(text.values())}), tmp_path / "items.parquet")
    pq.write_table(
        pa.table({"user_id": list(seqs), "item_ids": list(seqs.values())}), tmp_path / "sequences.parquet"
    )
    tasks = PALRTaskConfig(n_targets=2, swap_prob=0.0)
    recipe = PALRRecipeConfig(
        data_dir=str(tmp_path),
        retriever="cooccurrence",
        epochs=6,
        model=CausalLMConfig(max_length=1024),
        palr=PALRConfig(finetune_share=0.4, tasks=tasks),
    )
    cfg = TrainConfig(
        run_dir=str(tmp_path / "run"),
        max_steps=100,
        log_every=1,
        tensorboard=False,
        progress=False,
        deepspeed=DeepSpeedConfig(zero_stage=0, micro_batch_size=4),
        optim=OptimConfig(lr=5e-3),
    )
    cfg.checkpoint.save_at_end = False
    losses: list[float] = []

    from fusionrec.trainer.callbacks import Callback

    class Keep(Callback):
        def on_log(self, trainer, metrics) -> None:
            losses.append(metrics["palr/loss"])

    module = PALRModule(recipe)
    state = Trainer(cfg, DeepspeedStrategy(cfg.deepspeed), module, [], callbacks=[Keep()]).fit()
    assert len(module.examples) == 16 and module.skipped == {"too_long": 0}
    assert state.step == 6 * 4 == len(losses)
    assert losses[-1] < losses[0] - 0.2, losses


@pytest.mark.unit
def test_bench_loss_curve_window_means_and_ema_hand_computed():
    from fusionrec.bench.palr import loss_curve

    curve = loss_curve([1.0, 2.0, 3.0, 4.0, 5.0], window=2, ema=0.5)
    assert curve["window_means"] == [1.5, 3.5, 5.0]  # the last window holds one step
    assert curve["ema_last"] == pytest.approx(4.0625)  # 1 -> 1.5 -> 2.25 -> 3.125 -> 4.0625
    assert loss_curve([])["ema_last"] is None


@pytest.mark.integration
def test_palr_engine_optimises_exactly_the_lora_weights_with_warmup(tmp_path):
    """What `fusionrec train palr` trains: the optimizer holds the LoRA weights and nothing else, the base stays
    frozen, and the lr warms up linearly from lr/warmup (issue 17's checklist for a loss that does not fall)."""
    from fusionrec.trainer.config import DeepSpeedConfig, OptimConfig
    from fusionrec.trainer.model_config import LoRAConfig
    from fusionrec.trainer.recipes.palr.config import PALRRecipeConfig
    from fusionrec.trainer.recipes.palr.module import PALRModule
    from fusionrec.trainer.strategy import DeepspeedStrategy

    seqs, text = _catalog(10)
    pq.write_table(pa.table({"item_id": list(text), "text": list(text.values())}), tmp_path / "items.parquet")
    pq.write_table(
        pa.table({"user_id": list(seqs), "item_ids": list(seqs.values())}), tmp_path / "sequences.parquet"
    )
    lora = LoRAConfig(rank=4, alpha=8, targets="all-linear")
    recipe = PALRRecipeConfig(
        data_dir=str(tmp_path), retriever="cooccurrence", model=CausalLMConfig(max_length=1024, lora=lora)
    )
    strategy = DeepspeedStrategy(DeepSpeedConfig(zero_stage=0, micro_batch_size=2))
    strategy.setup()
    engine = PALRModule(recipe).configure(strategy, OptimConfig(lr=1e-3, warmup_steps=4))["ranker"]
    in_optimizer = {id(p) for g in engine._ds.optimizer.param_groups for p in g["params"]}
    named = dict(engine.module.named_parameters())
    lora_ids = {id(p) for n, p in named.items() if "lora_" in n}
    assert in_optimizer == lora_ids and len(lora_ids) == 2 * 7 * CausalLMConfig().tiny.num_layers
    assert all(p.requires_grad == ("lora_" in n) for n, p in named.items())
    assert engine.lr == pytest.approx(1e-3 / 4)  # step 0 of the warmup already moves the weights


@pytest.mark.unit
def test_bench_comparison_lines_hand_computed():
    """Three retrieved users (SASRec ranks 0, 5, 12) of 5 walked; the fine-tuned LM moves user 2's target to
    rank 1, the zero-shot LM moves user 1's to rank 30. HR@10 on retrieved users: SASRec 2/3, fine-tuned 3/3,
    zero-shot 1/3; on all walked users the two unretrieved users miss for every order."""
    from fusionrec.bench.palr import comparison_lines, rank_arrays
    from fusionrec.cluster.results import rank_interval

    finetuned = [(0, 0), (5, 5), (12, 1)]
    zeroshot = [(0, 0), (5, 30), (12, 12)]
    ranks = rank_arrays(finetuned, zeroshot, n_walked=5)
    assert ranks["all"]["finetuned"].tolist() == [0, 5, 1, -1, -1]
    lines = {(ln["bench"], ln["model"], ln["baseline_model"]): ln for ln in comparison_lines(ranks, {})}
    hr = lines[("palr-retrieved-HR@10", "finetuned", "sasrec")]
    assert (hr["ours"], hr["baseline"], hr["difference"], hr["users"]) == (1.0, 0.6667, 0.3333, 3)
    assert hr["ci95"] == [1.0, 1.0] and hr["difference_ci95"][0] >= 0.0  # user 2's +1 is the only change
    zs = lines[("palr-all-HR@10", "zeroshot", "sasrec")]
    assert (zs["ours"], zs["baseline"], zs["difference"], zs["users"]) == (0.2, 0.4, -0.2, 5)
    ndcg = lines[
        ("palr-retrieved-NDCG@5", "finetuned", "zeroshot")
    ]  # 1 + 1/log2(3) vs 1 (rank 5 is outside @5)
    assert ndcg["ours"] == pytest.approx(round((1 + 1 / math.log2(3)) / 3, 4))
    assert ndcg["baseline"] == pytest.approx(round(1 / 3, 4))
    assert len(lines) == 3 * 5 + 3 * 2  # retrieved: 5 metrics, all walked: HR@10 and NDCG@10
    lo, hi = rank_interval(np.array([0, -1, 3, 20]), "HR@10")
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0
    with pytest.raises(AssertionError, match="same users"):
        rank_arrays(finetuned, zeroshot[:2], 5)
