"""IDGenRec recipe, single process: collation (labels -100, exact soft-ID positions), soft IDs = softmax of the
generator's teacher-forced logits with gradients reaching only the generator, title IDs, the warm-up item
loader, the phase plan, ranking evaluation against HF generate, config validation and the shipped TOMLs.

The 2-process DeepSpeed runs (ZeRO-2/3 alternation, resume, checkpoint evaluation) are in
test_idgenrec_dist.py; `make_corpus` and `tiny_config` here are shared with it.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from fusionrec.data_pipeline.config import ShardConfig
from fusionrec.data_pipeline.loader import LoaderConfig, ShardDataset
from fusionrec.data_pipeline.preprocess import ProcessedDataset
from fusionrec.data_pipeline.shards import write_shards
from fusionrec.trainer.idgen.generator import IDGenConfig
from fusionrec.trainer.idgen.id_table import IDTable
from fusionrec.trainer.models.seq2seq import ModelConfig, build_seq2seq
from fusionrec.trainer.models.soft_ids import SoftIDRecommender
from fusionrec.trainer.models.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer
from fusionrec.trainer.module_base import Phase
from fusionrec.trainer.prompts import TEMPLATES, PromptBuilder, PromptConfig, build_prompt
from fusionrec.trainer.recipes.idgenrec.artefacts import RankingConfig, build_trie, evaluate
from fusionrec.trainer.recipes.idgenrec.config import IDGenRecConfig, IDGenRecDataConfig
from fusionrec.trainer.recipes.idgenrec.data import (
    IDGenRecCollator,
    ItemBatches,
    encodable_fn,
    id_tokens,
    load_items,
    title_table,
)
from fusionrec.trainer.recipes.idgenrec.module import IDGenRecModule
from fusionrec.trainer.recipes.idgenrec.tokenizer import check_shared_vocab
from fusionrec.trainer.tokens import IGNORE_INDEX as IGNORE

COLORS = ["red", "blue", "green", "black", "white", "pink", "gold", "silver"]
NOUNS = ["lipstick", "shampoo", "brush", "lotion", "mirror", "perfume"]
TINY = dict(d_model=32, num_layers=1, num_decoder_layers=1, num_heads=2, d_ff=64, dropout=0.0)


# ---------------------------------------------------------------------- shared fixtures (also used by _dist)
def make_corpus(root: Path, n_items: int = 36, n_users: int = 48) -> Path:
    """A tiny prepared corpus written by the project's shard writer: users walk the catalogue in steps of 2
    (a learnable successor rule), 168 train / 48 valid / 48 test samples, items.parquet with titles."""
    items = [f"toy:i{k:02d}" for k in range(n_items)]
    titles = [
        f"{COLORS[k % 8]} {NOUNS[(k // 8) % 6]} {'deluxe' if k % 3 == 0 else 'mini'} set"
        for k in range(n_items)
    ]
    users, seqs = [f"u{u}" for u in range(n_users)], []
    for u in range(n_users):
        seqs.append([items[((u * 5) % n_items + 2 * j) % n_items] for j in range(5 + u % 4)])
    sequences = pa.table(
        {"user_id": users, "item_ids": seqs, "timestamps": [list(range(len(s))) for s in seqs]}
    )
    texts = [f"title: {t}; brand: acme; categories: beauty" for t in titles]
    item_table = pa.table({"item_id": items, "text": texts, "title": titles})
    dataset = ProcessedDataset(name="toy", sequences=sequences, items=item_table)
    shard_cfg = ShardConfig(samples_per_shard=64, engine="local")
    write_shards([dataset], root, shard_cfg, max_history=50, seed=0, sources={}, config_sha256="0" * 64)
    pq.write_table(item_table, root / "items.parquet")
    return root


def tiny_config(corpus: str, **kw) -> IDGenRecConfig:
    base = dict(
        data=IDGenRecDataConfig(corpus=str(corpus)),
        recommender=ModelConfig(seed=0, **TINY),
        id_generator=ModelConfig(seed=1, **TINY),
        tokenizer=TokenizerConfig(vocab_size=200),
        idgen=IDGenConfig(num_groups=4, lambda_max=3.0, max_windows=1),
        eval=RankingConfig(num_beams=10, top_k=10, ks=[5, 10]),
        id_lr=1e-3,
    )
    return IDGenRecConfig(**{**base, **kw})


def fit_idgenrec(
    cfg: IDGenRecConfig, run_dir: str, max_steps: int, resume: str | None, precision: str = "fp32"
):
    """(module, {step: loss}) of a real ZeRO-2 run of ``cfg`` (micro-batch 4, lr 3e-3, a checkpoint at the
    end); called inside a ``run_distributed_test`` worker by the 2-process recipe tests."""
    from fusionrec.trainer.callbacks import CheckpointCallback, HistoryCallback
    from fusionrec.trainer.config import CheckpointConfig, DeepSpeedConfig, OptimConfig, TrainConfig
    from fusionrec.trainer.loop import Trainer
    from fusionrec.trainer.recipes.idgenrec.module import build_idgenrec_module
    from fusionrec.trainer.strategy import DeepspeedStrategy

    ds = DeepSpeedConfig(zero_stage=2, micro_batch_size=4, precision=precision)
    tc = TrainConfig(run_dir=run_dir, max_steps=max_steps, log_every=1, tensorboard=False, progress=False,
                     deepspeed=ds, optim=OptimConfig(lr=3e-3), checkpoint=CheckpointConfig(resume=resume))  # fmt: skip
    module = build_idgenrec_module(cfg, tc.run_dir)
    history = HistoryCallback()
    Trainer(tc, DeepspeedStrategy(ds), module, [], [history, CheckpointCallback()]).fit()
    losses = {int(log["step"]): v for log in history.logs for k, v in log.items() if k.endswith("/loss")}
    return module, losses


def make_tokenizer(corpus: Path, out: Path) -> Path:
    """The tokenizer the module would train (item texts + templates + digits), saved as a folder."""
    texts, _ = load_items(corpus)
    train_tokenizer([*texts.values(), *TEMPLATES * 20, " ".join("0123456789")], out, 200)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("idgenrec") / "corpus")


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory):
    return load_tokenizer(make_tokenizer(corpus, tmp_path_factory.mktemp("tok") / "t"))


@pytest.fixture(scope="module")
def table(corpus, tokenizer) -> IDTable:
    _, titles = load_items(corpus)
    return title_table(titles, 2, encodable_fn(tokenizer))


def _samples(corpus: Path, split: str = "train") -> list[dict]:
    return list(ShardDataset(corpus, LoaderConfig(splits=[split], shuffle=False, even_batches=False)))


def _collator(mode, tokenizer, table, corpus, max_history=20) -> IDGenRecCollator:
    texts, _ = load_items(corpus)
    builder = PromptBuilder(PromptConfig(max_history=max_history), table.as_dict())
    return IDGenRecCollator(mode, tokenizer, builder, id_tokens(table, tokenizer), table.version, texts=texts)


# ---------------------------------------------------------------------- collation
@pytest.mark.unit
def test_rec_labels_are_target_id_plus_eos_padded_minus_100_and_pad_samples_masked(corpus, tokenizer, table):
    samples = _samples(corpus)[:3]
    samples.append({**samples[0], "_pad": True, "_pos": -1})
    batch = _collator("eval", tokenizer, table, corpus)(samples)
    tokens = id_tokens(table, tokenizer)
    for row, s in enumerate(samples[:3]):
        expect = [*tokens[s["target"]], tokenizer.eos_token_id]
        assert batch["labels"][row, : len(expect)].tolist() == expect
        assert (batch["labels"][row, len(expect) :] == IGNORE).all()
        prompt = build_prompt([table[i] for i in s["history"][-20:]], template=0)
        n = int(batch["attention_mask"][row].sum())
        assert tokenizer.decode(batch["input_ids"][row, :n], skip_special_tokens=True) == prompt.text
        assert (batch["input_ids"][row, n:] == tokenizer.pad_token_id).all()
    assert (batch["labels"][3] == IGNORE).all() and batch["real"].tolist() == [True, True, True, False]


@pytest.mark.unit
def test_soft_positions_hold_exactly_each_history_items_id_tokens(corpus, tokenizer, table):
    samples = [s for s in _samples(corpus) if len(s["history"]) >= 3][:4]
    batch = _collator("id", tokenizer, table, corpus, max_history=3)(samples)
    tokens = id_tokens(table, tokenizer)
    distinct = list(dict.fromkeys(i for s in samples for i in s["history"][-3:]))
    assert batch["gen_input_ids"].shape[0] == len(distinct)
    expected_rows = []
    for row, s in enumerate(samples):
        for item in s["history"][-3:]:  # history capped at 3 items: older ones are not in the prompt
            expected_rows += [(row, distinct.index(item), j, t) for j, t in enumerate(tokens[item])]
    got = [
        (int(r), int(u), int(j), int(batch["input_ids"][r, p]))
        for (r, p), (u, j) in zip(batch["soft_index"], batch["soft_item_step"], strict=True)
    ]
    assert got == expected_rows
    for u, item in enumerate(distinct):  # teacher forcing: [start, d1 .. d_{n-1}], then pad
        n = len(tokens[item])
        assert batch["gen_decoder_input_ids"][u, :n].tolist() == [0, *tokens[item][:-1]]
        assert (batch["gen_decoder_input_ids"][u, n:] == tokenizer.pad_token_id).all()


@pytest.mark.unit
def test_misaligned_id_tokens_raise(corpus, tokenizer, table):
    texts, _ = load_items(corpus)
    bad = {k: [*v, v[-1]] for k, v in id_tokens(table, tokenizer).items()}  # tokens the prompt does not hold
    builder = PromptBuilder(PromptConfig(), table.as_dict())
    collate = IDGenRecCollator("id", tokenizer, builder, bad, table.version, texts=texts)
    with pytest.raises(ValueError, match="soft IDs would be misplaced"):
        collate(_samples(corpus)[:2])


# ---------------------------------------------------------------------- soft IDs through the module
class _Bare:
    """Stands in for an Engine: callable like the model, ``module`` is the model (no DeepSpeed)."""

    zero_stage = 0

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def _bare_module(corpus, tokenizer, table, tmp_path) -> IDGenRecModule:
    """The module with plain (non-DeepSpeed) models in place of engines: the math of train_batch."""
    module = IDGenRecModule(tiny_config(str(corpus)), tmp_path)
    module.tokenizer, module.table, module.tokens = tokenizer, table, id_tokens(table, tokenizer)
    rec = build_seq2seq(module.cfg.recommender, tokenizer=tokenizer).eval()
    gen = build_seq2seq(module.cfg.id_generator, tokenizer=tokenizer).train()
    module.engines = {"recommender": _Bare(SoftIDRecommender(rec)), "id_generator": _Bare(gen)}
    module.rec_start = module.gen_start = 0
    return module


@pytest.mark.unit
def test_id_phase_soft_ids_are_softmax_and_gradients_reach_only_the_generator(
    corpus, tokenizer, table, tmp_path
):
    module = _bare_module(corpus, tokenizer, table, tmp_path)
    module.engines["recommender"].module.requires_grad_(False)
    batch = _collator("id", tokenizer, table, corpus)(_samples(corpus)[:4])
    soft = module.soft_ids(batch)
    logits = module.engines["id_generator"](
        input_ids=batch["gen_input_ids"],
        attention_mask=batch["gen_attention_mask"],
        decoder_input_ids=batch["gen_decoder_input_ids"],
    ).logits
    u, j = batch["soft_item_step"].T
    torch.testing.assert_close(
        soft["soft_probs"], torch.softmax(logits[u, j], -1)
    )  # softmax, not log-softmax
    assert torch.allclose(soft["soft_probs"].sum(-1), torch.ones(len(u)))
    loss = module.train_batch(batch, Phase("id", "id_generator", steps=1))["loss"]
    loss.backward()
    assert all(p.grad is None for p in module.engines["recommender"].module.parameters())
    assert sum(float(p.grad.abs().sum()) for p in module.engines["id_generator"].module.parameters()) > 0


@pytest.mark.unit
def test_one_hot_soft_ids_reproduce_the_hard_rec_loss(corpus, tokenizer, table, tmp_path):
    """Exact positions: replacing each ID token by its one-hot distribution changes nothing."""
    module = _bare_module(corpus, tokenizer, table, tmp_path)
    batch = _collator("id", tokenizer, table, corpus)(_samples(corpus)[:4])
    rec_phase = Phase("rec", "recommender", steps=1)
    with torch.no_grad():
        hard = module.train_batch(batch, rec_phase)["loss"]
        rows, pos = batch["soft_index"].T
        one_hot = torch.nn.functional.one_hot(batch["input_ids"][rows, pos], len(tokenizer)).float()
        soft = {"soft_probs": one_hot, "soft_index": batch["soft_index"]}
        from fusionrec.trainer.tokens import token_nll

        nll, n = token_nll(module._rec_logits(batch, soft), batch["labels"])
    torch.testing.assert_close(nll / n, hard)


@pytest.mark.unit
@pytest.mark.parametrize("trie_softmax", [False, True])
def test_all_padding_batch_gives_zero_loss_not_nan(corpus, tokenizer, table, tmp_path, trie_softmax):
    module = _bare_module(corpus, tokenizer, table, tmp_path)
    module.cfg.trie_softmax = trie_softmax
    samples = [{**s, "_pad": True} for s in _samples(corpus)[:2]]
    out = module.train_batch(
        _collator("rec", tokenizer, table, corpus)(samples), Phase("rec", "recommender", steps=1)
    )
    assert out["loss"].item() == 0.0 and out["loss"].requires_grad


@pytest.mark.unit
def test_trie_softmax_loss_is_the_item_level_nll_of_a_distribution_over_the_catalogue(
    corpus, tokenizer, table, tmp_path
):
    """With ``trie_softmax`` the summed loss of a sample is -log P(target item), where P is a proper
    distribution over the catalogue; checked against the next-token sets enumerated from the ID list."""
    module = _bare_module(corpus, tokenizer, table, tmp_path)
    module.cfg.trie_softmax = True
    samples = _samples(corpus)[:3]
    batch = _collator("rec", tokenizer, table, corpus)(samples)
    with torch.no_grad():
        nll, n = module._rec_nll(module._rec_logits(batch, {}), batch["labels"])
        loss = module.train_batch(batch, Phase("rec", "recommender", steps=1))["loss"]
    torch.testing.assert_close(loss, nll / n)
    paths = {item: module.tokens[item] + [tokenizer.eos_token_id] for item in table}
    model = module.engines["recommender"].module
    total = torch.zeros((), dtype=torch.float64)
    for row, sample in enumerate(samples):
        log_p = {}
        for item, path in paths.items():
            dec = torch.tensor([[0, *path[:-1]]])
            with torch.no_grad():
                logits = (
                    model(
                        input_ids=batch["input_ids"][row : row + 1],
                        attention_mask=batch["attention_mask"][row : row + 1],
                        decoder_input_ids=dec,
                    )
                    .logits[0]
                    .double()
                )
            score = 0.0
            for j, tok in enumerate(path):
                allowed = sorted({p[j] for p in paths.values() if len(p) > j and p[:j] == path[:j]})
                score += (logits[j, tok] - torch.logsumexp(logits[j, allowed], 0)).item()
            log_p[item] = score
        assert abs(sum(math.exp(v) for v in log_p.values()) - 1.0) < 1e-6  # a distribution over items
        total += -log_p[sample["target"]]
    torch.testing.assert_close(nll.double(), total, atol=1e-3, rtol=1e-5)


@pytest.mark.unit
def test_trie_softmax_loss_over_the_emitted_columns_equals_the_full_vocabulary_one(
    corpus, tokenizer, table, tmp_path
):
    """The head computes only the trie's emitted tokens' logits (a T5 recommender below ZeRO-3): the loss and
    every gradient equal those of the full [B, T, V] logits (emitted_head = false); ZeRO-3 keeps the full head."""
    module = _bare_module(corpus, tokenizer, table, tmp_path)
    module.cfg.trie_softmax = True
    batch = _collator("rec", tokenizer, table, corpus)(_samples(corpus)[:4])
    model = module.engines["recommender"].module
    assert module._restricted()
    trie = module._device_trie(torch.device("cpu"))
    assert trie.emitted_tokens.numel() < model.config.vocab_size
    module.engines["recommender"].zero_stage = 3
    assert not module._restricted()
    module.engines["recommender"].zero_stage = 0
    results = []
    for restricted in (True, False):
        model.zero_grad()
        module.cfg.emitted_head = restricted
        logits = module._rec_logits(batch, {})
        assert logits.shape[-1] == (trie.emitted_tokens.numel() if restricted else model.config.vocab_size)
        nll, n = module._rec_nll(logits, batch["labels"])
        (nll / n).backward()
        results.append((nll.detach(), [p.grad.clone() for p in model.parameters()]))
    assert isinstance(model.model.lm_head, torch.nn.Linear)  # the full head is back after the forward
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------- IDs, warm-up loader, plan, config
@pytest.mark.unit
def test_title_table_takes_first_words_and_dedupes_by_lengthening_then_suffixing():
    titles = {
        "a": "Red Lipstick, Deluxe!",
        "b": "red lipstick mini",
        "c": "Red lipstick",
        "d": "RED LIPSTICK",
    }
    table = title_table(titles, 2, lambda w: True)
    assert table.as_dict() == {
        "a": "red lipstick",
        "b": "red lipstick mini",
        "c": "red lipstick 2",
        "d": "red lipstick 3",
    }
    assert table.stats["lengthened"] == 1 and table.stats["suffixed"] == 2


@pytest.mark.unit
def test_item_batches_each_item_once_per_epoch_padded_even_and_resumable():
    items = [f"i{k}" for k in range(11)]
    make = lambda chunk, real: {"items": list(chunk), "real": torch.tensor(real)}  # noqa: E731
    ranks = [ItemBatches(items, make, 2, r, 2, seed=3) for r in range(2)]
    seen = [[i for b in loader for i, r in zip(b["items"], b["real"], strict=True) if r] for loader in ranks]
    assert len(ranks[0]) == len(ranks[1]) == 3 and sorted(seen[0] + seen[1]) == sorted(items)
    again = ItemBatches(items, make, 2, 0, 2, seed=3)
    it = iter(again)
    next(it)
    state = again.state_dict()
    resumed = ItemBatches(items, make, 2, 0, 2, seed=3)
    resumed.load_state_dict(state)
    assert [b["items"] for b in resumed] == [b["items"] for b in it]
    with pytest.raises(ValueError, match="another seed/world"):
        ItemBatches(items, make, 2, 0, 1, seed=3).load_state_dict(state)


@pytest.mark.unit
def test_plan_rounds_order_steps_and_epochs(corpus, tmp_path):
    cfg = tiny_config(str(corpus), order=["rec", "id"], rounds=2, rec_steps=5, id_epochs=1, warmup_steps=3)
    plan = IDGenRecModule(cfg, tmp_path).plan(max_steps=100)
    assert [(p.name, p.engine, p.steps, p.epochs, p.round) for p in plan] == [
        ("warmup", "id_generator", 3, None, 0),
        ("rec", "recommender", 5, None, 0),
        ("id", "id_generator", None, 1, 0),
        ("rec", "recommender", 5, None, 1),
        ("id", "id_generator", None, 1, 1),
    ]
    # order = ["rec"]: the recommender alone on the fixed initial IDs (no ID phase, no regeneration).
    cfg = tiny_config(str(corpus), order=["rec"], rounds=1, rec_epochs=2)
    plan = IDGenRecModule(cfg, tmp_path).plan(max_steps=100)
    assert [(p.name, p.engine, p.steps, p.epochs) for p in plan] == [("rec", "recommender", None, 2)]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"order": ["id", "id"]}, "permutation"),
        ({"order": ["id"]}, "permutation"),
        ({"reduce_vocab": True}, "pretrained_tokenizer"),
        ({"data": IDGenRecDataConfig(corpus="x", bucket_window=-1)}, "bucket_window"),
        ({"initial_ids": "random"}, "initial_ids"),
        ({"rounds": 0}, "rounds"),
        ({"id_lr": 0.0}, "id_lr"),
        ({"warmup_lr": -1.0}, "warmup_lr"),
        ({"collab_branching": 1}, "collab_branching"),
        ({"initial_ids": "collab", "prompt": PromptConfig(use_user_id=True)}, "use_user_id"),
        ({"eval": None}, None),
    ],
)
def test_config_validation(corpus, kw, match):
    if match is None:
        with pytest.raises(ValueError, match="top_k"):
            RankingConfig(num_beams=5, top_k=10)
        return
    with pytest.raises(ValueError, match=match):
        tiny_config(str(corpus), **kw)


@pytest.mark.unit
def test_default_config_builds_but_a_module_needs_a_corpus(tmp_path):
    cfg = IDGenRecConfig()  # the root config tree can hold a default [idgenrec] section
    with pytest.raises(ValueError, match="corpus is empty"):
        IDGenRecModule(cfg, tmp_path)
    with pytest.raises(ValueError, match="items.parquet: missing"):
        IDGenRecModule(IDGenRecConfig(data=IDGenRecDataConfig(corpus=str(tmp_path))), tmp_path)


@pytest.mark.unit
def test_models_must_share_one_vocabulary(tokenizer):
    rec = build_seq2seq(ModelConfig(**TINY), vocab_size=len(tokenizer), tokenizer=None)
    gen = build_seq2seq(ModelConfig(**TINY), vocab_size=len(tokenizer) + 1, tokenizer=None)
    with pytest.raises(ValueError, match="share one tokenizer"):
        check_shared_vocab(rec, gen, tokenizer)
    assert check_shared_vocab(rec, rec, tokenizer) == len(tokenizer)


@pytest.mark.unit
def test_load_items_errors_name_file_and_row(tmp_path):
    with pytest.raises(ValueError, match="items.parquet: missing"):
        load_items(tmp_path)
    pq.write_table(
        pa.table({"item_id": ["a", "b"], "text": ["title: x; brand: y", "  "]}), tmp_path / "items.parquet"
    )
    with pytest.raises(ValueError, match=r"row 1, item 'b': empty text"):
        load_items(tmp_path)


# ---------------------------------------------------------------------- ranking
@pytest.mark.unit
def test_evaluate_equals_hf_generate_ranking_by_hand(corpus, tokenizer, table):
    """HR/NDCG from our evaluate() == the same metrics computed by hand from HF's constrained generate."""
    model = build_seq2seq(ModelConfig(**TINY), tokenizer=tokenizer).eval()
    tokens = id_tokens(table, tokenizer)
    trie = build_trie(table, tokens, 0, tokenizer.eos_token_id)
    samples = _samples(corpus, "valid")[:6]
    cfg = RankingConfig(num_beams=6, top_k=6, ks=[1, 3, 6], batch_size=4)
    got = evaluate(model, tokenizer, table, trie, samples, cfg).to_dict()
    batch = _collator("eval", tokenizer, table, corpus)(samples)
    with torch.no_grad():
        out = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            num_beams=6,
            num_return_sequences=6,
            max_new_tokens=trie.max_depth,
            prefix_allowed_tokens_fn=trie.prefix_allowed_tokens_fn(),
        )
    hr = {k: 0.0 for k in (1, 3, 6)}
    ndcg = {k: 0.0 for k in (1, 3, 6)}
    for i, s in enumerate(samples):
        ranked = [tokenizer.decode(seq, skip_special_tokens=True) for seq in out[i * 6 : (i + 1) * 6]]
        rank = ranked.index(table[s["target"]]) if table[s["target"]] in ranked else None
        for k in hr:
            if rank is not None and rank < k:
                hr[k] += 1 / len(samples)
                ndcg[k] += 1 / math.log2(rank + 2) / len(samples)
    assert got["count"] == 6
    for k in hr:
        assert got[f"HR@{k}"] == pytest.approx(hr[k]) and got[f"NDCG@{k}"] == pytest.approx(ndcg[k])


# ---------------------------------------------------------------------- shipped configs
@pytest.mark.unit
@pytest.mark.parametrize("name", ["idgenrec_tiny", "idgenrec_paper"])
def test_shipped_configs_parse_and_validate(name):
    from fusionrec.launch.config import load_config

    root = load_config(name)  # the root tree: the corpus path may sit at the top level
    train, cfg = root.train, root.idgenrec
    assert isinstance(cfg, IDGenRecConfig) and cfg.data.corpus
    assert train.deepspeed.resolve_batch(2).train_batch_size >= 2
    if name == "idgenrec_paper":  # IDGenRec §3.2: 1 ID epoch, 10 rec epochs, 3 rounds, rec lr 1e-3
        assert (cfg.id_epochs, cfg.rec_epochs, cfg.rounds, cfg.order) == (1, 10, 3, ["id", "rec"])
        assert train.optim.lr == 1e-3 and cfg.id_lr > 1e-8
        assert cfg.recommender.name_or_path == "t5-small"
        assert cfg.id_generator.name_or_path == "nandakishormpai/t5-small-machine-articles-tag-generation"
        assert cfg.initial_ids == "generator" and cfg.pretrained_tokenizer == "t5-small"
    else:
        assert cfg.recommender.name_or_path == cfg.id_generator.name_or_path == "tiny-t5"
        assert not cfg.pretrained_tokenizer and not cfg.tokenizer.path


# ---------------------------------------------------------------------- real data, real T5 tokenizer
@pytest.mark.slow
def test_real_t5_tokenizer_soft_positions_on_beauty(shared_data, t5_tokenizer_dir):
    """Title IDs of real Beauty items under the real SentencePiece T5 tokenizer: every history item's soft
    positions in 500 users' prompts (all 10 templates) hold exactly its ID tokens; no ID has <unk>."""
    root = shared_data / "amazon_beauty"
    text = {}
    for line in (root / "item_plain_text.txt").read_text(encoding="utf-8").splitlines():
        item, _, rest = line.partition(" ")
        text[item] = rest
    tok = load_tokenizer(t5_tokenizer_dir)
    titles = {i: t.split(";")[0].removeprefix("title:").strip() or t for i, t in text.items()}
    table = title_table(titles, 3, encodable_fn(tok))
    assert len(table) == len(text) > 12000
    tokens = id_tokens(table, tok)  # raises on <unk> / empty
    lines = (root / "user_sequence.txt").read_text().splitlines()[:500]
    samples = []
    for line in lines:
        user, *items = line.split()
        samples += [
            {"user": user, "history": items[:t], "target": items[t], "__key__": f"{user}/{t}"}
            for t in range(1, len(items))
        ]
    builder = PromptBuilder(PromptConfig(), table.as_dict())
    collate = IDGenRecCollator("id", tok, builder, tokens, table.version, texts=text)
    n_soft = 0
    for start in range(0, len(samples), 64):
        batch = collate(samples[start : start + 64])
        rows, pos = batch["soft_index"].T
        u, j = batch["soft_item_step"].T
        dec = batch["gen_decoder_input_ids"]
        # token at (row, pos) == step j of item u's ID == the teacher-forced input of step j + 1
        nxt = torch.where(j + 1 < dec.shape[1], dec[u, (j + 1).clamp(max=dec.shape[1] - 1)], -1)
        last = (j + 1 == dec.shape[1]) | (nxt == tok.pad_token_id)
        assert ((batch["input_ids"][rows, pos] == nxt) | last).all()
        n_soft += len(rows)
    assert n_soft > 10000
