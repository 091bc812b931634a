"""``idgenrec.trie_softmax`` through the whole recipe: a 2-process DeepSpeed run (ID phase, regeneration,
recommender phase) trains on the item-level loss, resumes with the same losses, and every consumer of its
checkpoint (module ``evaluate``, ``export``; the Ray scorer loads it through the same function) decodes it
with the renormalised scoring; a resume with the other setting is refused. The loss itself is checked by hand in test_idgenrec.py and the
decoding against HF's ``renormalize_logits`` in test_beam_search.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from fusionrec.trainer.models.tokenizer import TokenizerConfig
from fusionrec.trainer.recipes.idgenrec.module import IDGenRecModule
from test_idgenrec import fit_idgenrec, make_corpus, make_tokenizer, tiny_config

SCHEDULE = dict(rounds=1, id_steps=2, rec_steps=2, trie_softmax=True)  # id: steps 1-2, rec: steps 3-4
TOTAL, STOP_AT = 4, 3


def _worker(corpus: str, tokenizer: str, run_dir: str) -> dict:
    cfg = tiny_config(corpus, tokenizer=TokenizerConfig(path=tokenizer), **SCHEDULE)

    def fit(sub: str, max_steps: int, resume: str | None):
        return fit_idgenrec(cfg, f"{run_dir}/{sub}", max_steps, resume)

    module, losses = fit("full", TOTAL, None)
    out = {"losses": losses, "history": module.history, "metrics": module.evaluate_split("valid")}
    fit("resumed", STOP_AT, None)
    out["resumed_losses"] = fit("resumed", TOTAL, "auto")[1]
    return out


@pytest.mark.distributed
def test_trie_softmax_run_trains_resumes_and_is_decoded_renormalised_everywhere(tmp_path: Path) -> None:
    from fusionrec.data_pipeline.loader import LoaderConfig, ShardDataset
    from fusionrec.trainer.checkpoint import list_checkpoints
    from fusionrec.trainer.recipes.idgenrec.artefacts import evaluate, export_idgenrec, load_idgenrec_for_eval
    from fusionrec.trainer.testing import run_distributed_test

    corpus = make_corpus(tmp_path / "corpus")
    tok = make_tokenizer(corpus, tmp_path / "tokenizer")
    r0, r1 = run_distributed_test(_worker, world_size=2, timeout_s=300, corpus=str(corpus), tokenizer=str(tok),
                                  run_dir=str(tmp_path))  # fmt: skip
    assert r0["losses"] == r1["losses"] and sorted(r0["losses"]) == [1, 2, 3, 4]
    # regenerated after the ID phase: the rec phase trained on the new table's trie (a stale one would fail)
    assert len(r0["history"]) == 2 and r0["history"][0] != r0["history"][1]
    assert all(math.isfinite(v) and v > 0 for v in r0["losses"].values())
    assert r0["resumed_losses"] == {4: pytest.approx(r0["losses"][4], rel=1e-5)}
    # The checkpoint says how it is decoded; module evaluate from it == the in-training evaluation.
    ckpt = list_checkpoints(tmp_path / "full" / "checkpoints")[-1][1]
    model, tokenizer, table, trie = load_idgenrec_for_eval(ckpt)
    assert model.config.trie_softmax is True
    cfg = tiny_config(str(corpus), **SCHEDULE)
    valid = [
        s for s in ShardDataset(corpus, LoaderConfig(splits=["valid"], shuffle=False, even_batches=False))
    ]
    with torch.no_grad():
        sums = evaluate(model, tokenizer, table, trie, valid, cfg.eval, cfg.prompt)
        model.config.trie_softmax = False  # the same weights decoded the plain way rank differently
        plain = evaluate(model, tokenizer, table, trie, valid, cfg.eval, cfg.prompt)
        model.config.trie_softmax = True
    assert sums.to_dict() == pytest.approx(r0["metrics"]) and sums.to_dict()["count"] == 48
    assert sums.to_dict() != plain.to_dict()
    # Export writes the setting into the HF config, and HF's equivalent decoding into generation_config.json.
    written = export_idgenrec(ckpt, tmp_path / "export")
    exported = json.loads((written["recommender"] / "config.json").read_text())
    generation = json.loads((written["recommender"] / "generation_config.json").read_text())
    assert exported["trie_softmax"] is True
    assert generation["renormalize_logits"] is True


@pytest.mark.unit
def test_resume_with_the_other_trie_softmax_setting_is_refused(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus")
    module = IDGenRecModule(tiny_config(str(corpus)), tmp_path / "run")
    with pytest.raises(ValueError, match="idgenrec.trie_softmax = true"):
        module.load_state_dict({"trie_softmax": True, "user_table": None})
    module = IDGenRecModule(tiny_config(str(corpus), trie_softmax=True), tmp_path / "run")
    with pytest.raises(ValueError, match="idgenrec.trie_softmax = false"):
        module.load_state_dict({"user_table": None})  # a checkpoint from before the option: full softmax
