"""DMPO loss (paper eq. 3), reference log-probs, AUC (eq. 4), and the 2-process ZeRO-3 + LoRA recipe."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fusionrec.trainer.models.causal_lm import CausalLMConfig, build_ranker
from fusionrec.trainer.recipes.dmpo.config import DMPOConfig
from fusionrec.trainer.recipes.dmpo.data import (
    PreferenceGroup,
    PreferenceRecord,
    RankingPrompt,
    TruncationStats,
    answer,
    encode_groups,
    render_item,
)
from fusionrec.trainer.recipes.dmpo.loss import (
    auc,
    collate_groups,
    dmpo_loss,
    group_logps,
    precompute_reference,
)

# ---------------------------------------------------------------- the loss against direct formulas


@pytest.mark.unit
def test_k1_equals_standard_dpo_sigmoid_loss():
    g = torch.Generator().manual_seed(0)
    pc, rc = torch.randn(6, generator=g) * 5, torch.randn(6, generator=g) * 5
    pr, rr = torch.randn(6, 1, generator=g) * 5, torch.randn(6, 1, generator=g) * 5
    beta = 0.3
    ours = dmpo_loss(pc, pr, rc, rr, beta).loss
    expected = [
        -math.log(1 / (1 + math.exp(-beta * ((a - b) - (c - d)))))
        for a, b, c, d in zip(pc.tolist(), rc.tolist(), pr[:, 0].tolist(), rr[:, 0].tolist(), strict=True)
    ]
    assert ours.item() == pytest.approx(sum(expected) / len(expected), rel=1e-6)


@pytest.mark.unit
def test_policy_equal_reference_gives_ln2():
    lp = torch.randn(4) * 10
    lr = torch.randn(4, 3) * 10
    assert dmpo_loss(lp, lr, lp.clone(), lr.clone(), beta=0.1).loss.item() == pytest.approx(
        math.log(2), abs=1e-7
    )


@pytest.mark.unit
def test_negatives_averaged_inside_the_sigmoid_hand_computed():
    # β=0.5; chosen log-ratio 1 → 0.5; rejected log-ratios (-1, 1, 0) → mean 0 → loss = log(1 + e^-0.5)
    out = dmpo_loss(
        torch.tensor([-1.0]),
        torch.tensor([[-3.0, -1.0, -2.0]]),
        torch.tensor([-2.0]),
        torch.full((1, 3), -2.0),
        0.5,
    )
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-0.5)), rel=1e-6)  # 0.474077
    pairwise = sum(-F.logsigmoid(torch.tensor(0.5 - 0.5 * r)).item() for r in (-1.0, 1.0, 0.0)) / 3
    assert abs(out.loss.item() - pairwise) > 1e-3  # not the mean of k pairwise DPO losses
    assert out.accuracy.item() == 1.0


@pytest.mark.unit
def test_loss_rejects_bad_shapes_and_config():
    with pytest.raises(ValueError, match=r"\[B, k\]"):
        dmpo_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(2), 0.1)
    with pytest.raises(ValueError, match="beta"):
        DMPOConfig(beta=0.0)
    with pytest.raises(ValueError, match="k"):
        DMPOConfig(k=0)


@pytest.mark.unit
def test_auc_hand_computed_with_ties():
    # pairs: (.9,.5)=1 (.9,.1)=1 (.5,.5)=½ (.5,.1)=1 (.5,.5)=½ (.5,.1)=1 → 5/6
    assert auc([0.9, 0.5, 0.5], [0.5, 0.1]) == pytest.approx(5 / 6)
    assert auc([1.0], [2.0]) == 0.0
    with pytest.raises(ValueError):
        auc([], [1.0])


# ---------------------------------------------------------------- tiny model: reference log-probs


def _tiny_groups(n: int, k: int, seed: int = 0) -> list[PreferenceGroup]:
    rng = random.Random(seed)
    titles = [f"Movie {i} {'x' * (i % 5)}" for i in range(40)]
    groups = []
    for u in range(n):
        picks = rng.sample(titles, 6 + k)
        hist, pos, negs = picks[:5], picks[5], picks[6:]
        rows = []
        for j, neg in enumerate(negs):
            a, b = render_item(pos), render_item(neg)
            prompt = RankingPrompt([render_item(t) for t in hist], (a, b) if j % 2 else (b, a))
            rows.append(PreferenceRecord(prompt, answer(a, b), answer(b, a), f"user{u}:{j}"))
        groups.append(PreferenceGroup(rows))
    return groups


@pytest.mark.unit
def test_precomputed_reference_matches_on_the_fly_and_init_loss_is_ln2():
    model, tok = build_ranker(CausalLMConfig(max_length=512))  # LoRA B = 0: policy == its base at init
    enc = encode_groups(tok, _tiny_groups(5, 3), 512, TruncationStats())
    precompute_reference(model, enc, tok.pad_token_id, batch_size=3)
    batch = collate_groups(enc, tok.pad_token_id)
    chosen, rejected = group_logps(model, batch, k=3)
    torch.testing.assert_close(batch["ref_chosen"], chosen.detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(batch["ref_rejected"], rejected.detach(), rtol=1e-5, atol=1e-4)
    loss = dmpo_loss(chosen, rejected, batch["ref_chosen"], batch["ref_rejected"], 0.1).loss
    assert loss.item() == pytest.approx(math.log(2), abs=1e-4)


# ---------------------------------------------------------------- 2-process ZeRO-3 + LoRA through the Trainer


def _write_sft_file(path: Path, n: int) -> None:
    rows = [g.rows[0] for g in _tiny_groups(n, 1, seed=1)]
    recs = [{"instruction": r.prompt.render(), "input": "", "output": r.chosen} for r in rows]
    path.write_text(json.dumps(recs))


def _dist_worker(sft_file: str, run_dir: str) -> dict:
    from fusionrec.trainer.callbacks import Callback, CheckpointCallback
    from fusionrec.trainer.config import CheckpointConfig, DeepSpeedConfig, OptimConfig, TrainConfig
    from fusionrec.trainer.loop import Trainer
    from fusionrec.trainer.recipes.dmpo.config import DMPORecipeConfig
    from fusionrec.trainer.recipes.dmpo.module import DMPOModule
    from fusionrec.trainer.strategy import DeepspeedStrategy

    class Losses(Callback):
        def __init__(self) -> None:
            self.values: list[float] = []

        def on_log(self, trainer, metrics) -> None:
            self.values.append(metrics["sft/loss"])

    def fit(max_steps: int, resume: str | None, sub: str):
        cfg = TrainConfig(
            run_dir=f"{run_dir}/{sub}",
            max_steps=max_steps,
            log_every=1,
            tensorboard=False,
            progress=False,
            deepspeed=DeepSpeedConfig(zero_stage=3, micro_batch_size=2),
            optim=OptimConfig(lr=5e-3),
            checkpoint=CheckpointConfig(every_steps=4, resume=resume),
        )
        recipe = DMPORecipeConfig(
            stage="sft", sft_file=sft_file, epochs=10, model=CausalLMConfig(max_length=512)
        )
        module, losses = DMPOModule(recipe), Losses()
        trainer = Trainer(
            cfg, DeepspeedStrategy(cfg.deepspeed), module, [], callbacks=[losses, CheckpointCallback()]
        )
        before = None
        if resume is None:
            trainer._setup_engines()  # to snapshot the initial weights; fit() re-enters setup idempotently
            before = trainer.strategy.full_state_dict(module.engines["policy"])
            trainer.module = module = DMPOModule(recipe)
        trainer.fit()
        return trainer, module, losses.values, before

    full, module, losses, before = fit(8, None, "full")
    after = full.strategy.full_state_dict(module.engines["policy"])
    changed = sorted({n for n in after if not torch.equal(before[n], after[n])})
    export_dir = module.export(f"{run_dir}/export")
    half, _, _, _ = fit(4, None, "resumed")
    resumed, rmodule, rlosses, _ = fit(8, "auto", "resumed")
    rafter = resumed.strategy.full_state_dict(rmodule.engines["policy"])
    max_diff = max((after[n] - rafter[n]).abs().max().item() for n in after)
    return {
        "losses": losses,
        "changed": changed,
        "export": str(export_dir),
        "resumed_losses": rlosses,
        "resume_max_diff": max_diff,
        "first_step_after_resume": resumed.state.step,
    }


@pytest.mark.distributed
def test_zero3_lora_sft_two_processes(tmp_path):
    from fusionrec.trainer.testing import run_distributed_test

    sft_file = tmp_path / "sft.json"
    _write_sft_file(sft_file, 16)
    res = run_distributed_test(
        _dist_worker, world_size=2, timeout_s=600, sft_file=str(sft_file), run_dir=str(tmp_path)
    )
    r0 = res[0]
    losses = r0["losses"]
    assert len(losses) == 8
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.1, losses
    assert r0["changed"] and all("lora_" in n for n in r0["changed"]), r0["changed"]
    assert any("lora_B" in n for n in r0["changed"])
    # resume: the second half of the resumed run continues from step 4 and lands on the same weights
    assert len(r0["resumed_losses"]) == 4
    assert r0["resumed_losses"] == pytest.approx(losses[4:], rel=1e-4)
    assert r0["resume_max_diff"] < 1e-5
    # merged export loads with plain transformers and has no adapter weights left
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(r0["export"])
    assert not any("lora" in n for n, _ in merged.named_parameters())


def _write_dpo_file(path: Path, n: int, k: int) -> None:
    rows = [r for g in _tiny_groups(n, k, seed=2) for r in g.rows]
    path.write_text(
        json.dumps([{"instruction": r.prompt.render(), "output": [r.chosen, r.rejected]} for r in rows])
    )


@pytest.mark.integration
@pytest.mark.parametrize("reference", ["precomputed", "model"])
def test_dmpo_stage_starts_at_ln2_and_learns(tmp_path, reference):
    from fusionrec.trainer.callbacks import HistoryCallback
    from fusionrec.trainer.config import DeepSpeedConfig, OptimConfig, TrainConfig
    from fusionrec.trainer.loop import Trainer
    from fusionrec.trainer.recipes.dmpo.config import DMPORecipeConfig
    from fusionrec.trainer.recipes.dmpo.module import DMPOModule
    from fusionrec.trainer.strategy import DeepspeedStrategy

    dpo = tmp_path / "dpo.json"
    _write_dpo_file(dpo, 8, 2)
    recipe = DMPORecipeConfig(
        stage="dmpo",
        dpo_file=str(dpo),
        epochs=4,
        model=CausalLMConfig(max_length=512),
        dmpo=DMPOConfig(k=2, beta=0.5, reference=reference),
    )
    cfg = TrainConfig(
        run_dir=str(tmp_path / "run"),
        max_steps=100,
        log_every=1,
        tensorboard=False,
        progress=False,
        deepspeed=DeepSpeedConfig(zero_stage=0, micro_batch_size=4),
        optim=OptimConfig(lr=1e-2),
    )
    cfg.checkpoint.save_at_end = False
    history = HistoryCallback()
    module = DMPOModule(recipe)
    Trainer(cfg, DeepspeedStrategy(cfg.deepspeed), module, [], callbacks=[history]).fit()
    logs = history.logs  # no validation here: every entry is a training log
    assert (module.reference is not None) == (reference == "model")
    losses = [m["dmpo/loss"] for m in logs]
    assert len(losses) == 8
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at step 0
    assert losses[-1] < losses[0] - 0.05, losses
    assert logs[-1]["dmpo/reward_accuracy"] > 0.5


@pytest.mark.unit
def test_auc_interval_and_paired_difference() -> None:
    from fusionrec.trainer.recipes.dmpo.loss import AUCResult, auc_interval

    perfect = AUCResult(1.0, 1.0, 4, 0, pos=[0.9, 0.8, 0.7, 0.6], neg=[0.1, 0.2, 0.3, 0.4])
    assert auc_interval(perfect) == [1.0, 1.0]
    assert auc_interval(perfect, perfect) == [0.0, 0.0]  # the same records scored alike: no difference
    flipped = AUCResult(0.0, 0.0, 4, 0, pos=perfect.neg, neg=perfect.pos)
    assert auc_interval(perfect, flipped) == [1.0, 1.0]  # AUC 1 - AUC 0 on every resample
    mixed = AUCResult(0.5, 0.5, 4, 0, pos=[0.9, 0.1, 0.9, 0.1], neg=[0.5, 0.5, 0.5, 0.5])
    lo, hi = auc_interval(mixed, resamples=500)
    assert 0.0 <= lo < 0.5 < hi <= 1.0
    with pytest.raises(ValueError, match="per-record scores"):
        auc_interval(AUCResult(0.5, 0.5, 0, 0))
    with pytest.raises(ValueError, match="same records"):
        auc_interval(perfect, AUCResult(0.5, 0.5, 2, 0, pos=[1.0, 0.0], neg=[0.0, 1.0]))
