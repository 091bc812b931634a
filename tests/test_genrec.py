"""GenRec recipe: ID alignment, separate user/item tables, cloze masking, labels, beam search, configs, ZeRO-2."""

from __future__ import annotations

import collections
import hashlib
import io
import json
import math
import tarfile
from pathlib import Path

import pytest
import torch
from fusionrec.configtree import ConfigError, from_dict, load_toml
from fusionrec.data_pipeline.loader import LoaderConfig, ShardDataset, ShardLoader
from fusionrec.trainer.config import TrainConfig
from fusionrec.trainer.decoding import constrained_beam_search
from fusionrec.trainer.models.genrec import GenRecForConditionalGeneration
from fusionrec.trainer.models.seq2seq import ModelConfig, build_seq2seq
from fusionrec.trainer.models.tokenizer import load_tokenizer
from fusionrec.trainer.recipes.genrec.config import GenRecConfig, GenRecDataConfig
from fusionrec.trainer.recipes.genrec.data import (
    ClozeCollate,
    FinetuneCollate,
    GenRecVocab,
    SequenceEncoder,
    cloze_position,
    prepare_tokenizer,
)
from fusionrec.trainer.recipes.genrec.module import build_genrec_module
from fusionrec.trainer.testing import run_distributed_test
from fusionrec.trainer.tokens import IGNORE_INDEX as IGNORE
from fusionrec.trainer.tokens import token_cross_entropy

REPO = Path(__file__).resolve().parents[1]
DATASETS = {"beauty": (14, 30), "toys": (8, 20)}  # users, items


# ------------------------------------------------------------------------------------------ fixtures


def user_sequences() -> dict[tuple[str, str], list[str]]:
    """Distinct items per user with a learnable rule (next = previous + 7 mod n_items)."""
    out = {}
    for name, (users, n_items) in DATASETS.items():
        for u in range(users):
            length = 5 + u % 4
            out[(name, f"u{u}")] = [f"{name}:i{(2 * u + 7 * k) % n_items}" for k in range(length)]
    return out


def loo_samples(seqs: dict[tuple[str, str], list[str]]) -> list[dict]:
    """Leave-one-out samples (DESIGN.md): train prefixes of items[:-2], valid = items[-2], test = items[-1]."""
    samples = []
    for (name, user), items in seqs.items():
        targets = [("train", t) for t in range(1, len(items) - 2)]
        for split, t in [*targets, ("valid", len(items) - 2), ("test", len(items) - 1)]:
            samples.append(
                {"dataset": name, "user": user, "split": split, "history": items[:t], "target": items[t]}
            )
    return samples


def write_corpus(root: Path, samples: list[dict], per_shard: int = 25) -> Path:
    """WebDataset tar shards + manifest.json (docs/ARCHITECTURE.md layout)."""
    root.mkdir(parents=True, exist_ok=True)
    seen: collections.Counter = collections.Counter()
    members = []
    for s in samples:
        ident = (s["dataset"], s["user"], s["split"])
        members.append((f"{'_'.join(ident)}_{seen[ident]}.json", json.dumps(s).encode()))
        seen[ident] += 1
    entries = []
    for i in range(0, len(members), per_shard):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in members[i : i + per_shard]:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
        raw = buf.getvalue()
        name = f"shard-{i // per_shard:06d}.tar"
        (root / name).write_bytes(raw)
        entries.append({"name": name, "samples": len(members[i : i + per_shard]), "bytes": len(raw)})
        entries[-1]["sha256"] = hashlib.sha256(raw).hexdigest()
    manifest = {"schema_version": 1, "shards": entries, "samples": len(samples)}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("genrec") / "corpus", loo_samples(user_sequences()))


@pytest.fixture(scope="module")
def vocab(corpus) -> GenRecVocab:
    return GenRecVocab.from_corpus(corpus)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return make_genrec_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer")


def make_genrec_tokenizer(out: Path) -> Path:
    """A fixed Unigram tokenizer (T5 layout) that splits every ID into a prefix piece and single digits:
    ``item_12`` -> ``▁item_``, ``1``, ``2``. Built from a given vocabulary, so it is the same on every run
    (training one with `tokenizers` is not deterministic)."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁item_", -1.0), ("▁user_", -1.0), ("▁", -5.0)]
    pieces += [(str(d), -2.0) for d in range(10)]
    backend = Tokenizer(Unigram(pieces, unk_id=2))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def encoder(tok_dir, vocab) -> SequenceEncoder:
    return SequenceEncoder(prepare_tokenizer(load_tokenizer(tok_dir)), vocab, GenRecDataConfig())


# ------------------------------------------------------------------------------------------ vocabulary + encoding


@pytest.mark.unit
def test_vocab_scans_every_user_and_item(vocab):
    seqs = user_sequences()
    assert vocab.num_users == len(seqs) == 22
    assert set(vocab.items) == {i for items in seqs.values() for i in items}
    assert vocab.user_row("toys", "u0") == vocab.users.index("toys/u0") + 1  # users are per platform
    with pytest.raises(ValueError, match="beauty:nope"):
        vocab.item_row("beauty:nope")
    assert GenRecVocab.from_state_dict(vocab.state_dict()) == vocab


@pytest.mark.unit
def test_every_subtoken_of_an_item_carries_its_row(encoder, vocab):
    tok = encoder.item_tokens
    assert tok[11] == [3, 7, 8] and tok[6] == [3, 13]  # item_12 -> ▁item_ 1 2; item_7 -> ▁item_ 7
    rows = [12, 7, 31, 4]
    user = 5
    enc = encoder.encode(user, rows)
    # Hand-built expectation: [user tokens] [item spans ...] [MASK] [eos]; T5-style tokenizer: no [BEG].
    exp_ids, exp_u, exp_i = list(encoder.user_tokens[user - 1]), [], []
    exp_u = [user] * len(exp_ids)
    exp_i = [0] * len(exp_ids)
    for r in rows:
        exp_ids += tok[r - 1]
        exp_u += [0] * len(tok[r - 1])
        exp_i += [r] * len(tok[r - 1])
    exp_ids += [encoder.mask, encoder.eos]
    exp_u += [0, 0]
    exp_i += [0, 0]
    assert (enc.input_ids, enc.user_index, enc.item_index) == (exp_ids, exp_u, exp_i)
    # Cloze: item 1 replaced by ONE mask token without an ID; the others keep every sub-token's row.
    cl = encoder.encode(user, rows, mask_at=1)
    assert cl.input_ids.count(encoder.mask) == 1 and rows[1] not in cl.item_index
    assert cl.item_index[cl.input_ids.index(encoder.mask)] == 0
    assert collections.Counter(cl.item_index)[rows[2]] == len(tok[rows[2] - 1])


@pytest.mark.unit
def test_truncation_keeps_most_recent_items_and_counts(tok_dir, vocab):
    tok = prepare_tokenizer(load_tokenizer(tok_dir))
    enc = SequenceEncoder(tok, vocab, GenRecDataConfig(max_history=3))
    e = enc.encode(1, [1, 2, 3, 4, 5])
    assert [r for r in dict.fromkeys(e.item_index) if r] == [3, 4, 5] and e.truncated == 2
    # Token budget: user + the 2 most recent items + [MASK] + eos fits exactly; a third item would not.
    rows = [11, 12, 13, 14]
    need = len(enc.user_tokens[0]) + sum(len(enc.item_tokens[r - 1]) for r in rows[-2:]) + 2
    small = SequenceEncoder(tok, vocab, GenRecDataConfig(max_input_tokens=need))
    e2 = small.encode(1, rows)
    assert len(e2.input_ids) == need and [r for r in dict.fromkeys(e2.item_index) if r] == rows[-2:]
    assert e2.truncated == 2


# ------------------------------------------------------------------------------------------ model


@pytest.fixture(scope="module")
def tiny(tok_dir, vocab):
    tok = prepare_tokenizer(load_tokenizer(tok_dir))
    enc = SequenceEncoder(tok, vocab, GenRecDataConfig())
    bart = build_seq2seq(
        ModelConfig(name_or_path="tiny-bart", dropout=0.0, d_model=64, d_ff=128), tokenizer=tok
    )
    model = GenRecForConditionalGeneration.from_bart(bart, vocab.num_users, vocab.num_items, seed=1).eval()
    return tok, enc, model


@pytest.mark.unit
def test_id_embeddings_use_separate_tables_for_every_subtoken(tiny, vocab):
    _, enc, model = tiny
    tok = enc.item_tokens
    rows = [6, 7, 18]
    user = 20
    assert user not in rows  # so a user-table lookup with an item row would touch a different row
    e = enc.encode(user, rows)
    ids, u, i = (torch.tensor([x]) for x in (e.input_ids, e.user_index, e.item_index))
    got = model.embed_inputs(ids, u, i)
    scale = model.get_encoder().embed_tokens.embed_scale
    expected = model.get_input_embeddings().weight[ids[0]] * scale
    for j, (ur, ir) in enumerate(zip(e.user_index, e.item_index, strict=True)):
        if ur:
            expected[j] = expected[j] + model.user_id_embed.weight[ur]
        if ir:
            expected[j] = expected[j] + model.item_id_embed.weight[ir]
    torch.testing.assert_close(got[0], expected)
    # Gradients land only on the rows the tokens name, each in its own table (the reference looked items
    # up in the user table: then user rows `rows` would get gradients and item rows none).
    model.zero_grad()
    model.embed_inputs(ids, u, i).sum().backward()
    user_rows = torch.nonzero(model.user_id_embed.weight.grad.abs().sum(1)).flatten().tolist()
    item_rows = torch.nonzero(model.item_id_embed.weight.grad.abs().sum(1)).flatten().tolist()
    assert user_rows == [user] and item_rows == sorted(rows)
    # Every sub-token adds the item row: d(sum)/d(row) = number of sub-tokens x ones.
    for r in rows:
        torch.testing.assert_close(
            model.item_id_embed.weight.grad[r], torch.full((64,), float(len(tok[r - 1])))
        )
    model.zero_grad()


@pytest.mark.unit
def test_encoder_adds_positions_after_id_embeddings(tiny):
    _, enc, model = tiny
    e = enc.encode(3, [1, 2, 3])
    ids, u, i = (torch.tensor([x]) for x in (e.input_ids, e.user_index, e.item_index))
    mask = torch.ones_like(ids)
    out = model.encode(ids, mask, u, i).last_hidden_state
    ref = model.get_encoder()(
        inputs_embeds=model.embed_inputs(ids, u, i), attention_mask=mask
    ).last_hidden_state
    torch.testing.assert_close(out, ref)
    plain = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    assert not torch.allclose(out, plain)  # the IDs change the encoding
    with pytest.raises(ValueError, match="both a user and an item"):
        model.embed_inputs(ids, u, torch.where(u > 0, 1, i))
    with pytest.raises(ValueError, match=r"item_index values must be in \[0, 50\]"):
        model.embed_inputs(ids, u, i + 60 * (i > 0))


# ------------------------------------------------------------------------------------------ masking and labels


def _pretrain_batches(corpus, enc, source: str, seed: int = 0) -> list[dict]:
    split = "valid" if source == "sequences" else "train"
    cfg = LoaderConfig(splits=[split], batch_size=5, shuffle=True, seed=seed)
    enc.cfg.pretrain_source = source
    try:
        return list(ShardLoader(ShardDataset(corpus, cfg), ClozeCollate(enc, seed=seed)))
    finally:
        enc.cfg.pretrain_source = "sequences"


@pytest.mark.unit
@pytest.mark.parametrize("source", ["sequences", "prefixes"])
def test_cloze_masks_exactly_one_training_item_never_holdout(corpus, tiny, vocab, source):
    _, enc, _ = tiny
    seqs = user_sequences()
    holdout = {vocab.user_row(*k): {vocab.item_row(x) for x in v[-2:]} for k, v in seqs.items()}
    training = {vocab.user_row(*k): {vocab.item_row(x) for x in v[:-2]} for k, v in seqs.items()}
    masked_targets, n_rows = collections.Counter(), 0
    for b in _pretrain_batches(corpus, enc, source):
        for r in range(len(b["input_ids"])):
            if not b["is_real"][r]:
                assert (b["labels"][r] == IGNORE).all()
                continue
            n_rows += 1
            real = b["attention_mask"][r].bool()
            ids, items = b["input_ids"][r][real], b["item_index"][r][real]
            user = int(b["user_index"][r].max())
            assert int((ids == enc.mask).sum()) == 1  # exactly one [MASK]
            assert int(items[ids == enc.mask]) == 0  # and it carries no item ID
            label = b["labels"][r][b["labels"][r] != IGNORE].tolist()
            target = next(i + 1 for i, t in enumerate(enc.item_tokens) if [*t, enc.eos] == label)
            assert target in training[user] and target not in holdout[user]
            assert not (set(items.tolist()) & holdout[user])  # valid/test targets never in the input
            masked_targets[target] += 1
    expected_rows = len(seqs) if source == "sequences" else sum(len(v) - 3 for v in seqs.values())
    assert n_rows == expected_rows
    assert len(masked_targets) > 5  # not always the same position


@pytest.mark.unit
def test_cloze_position_is_deterministic_and_uniform():
    assert cloze_position(0, "k", 3, 7) == cloze_position(0, "k", 3, 7)
    counts = collections.Counter(cloze_position(0, "key", p, 4) for p in range(4000))
    assert set(counts) == {0, 1, 2, 3} and min(counts.values()) > 900


@pytest.mark.unit
def test_finetune_labels_padded_with_ignore_and_mask_appended(tiny, vocab):
    tok, enc, model = tiny
    samples = [
        {
            "dataset": "beauty",
            "user": "u1",
            "split": "train",
            "history": ["beauty:i2"],
            "target": "beauty:i9",
        },
        {
            "dataset": "toys",
            "user": "u3",
            "split": "train",
            "history": ["toys:i6", "toys:i13"],
            "target": "toys:i12",
        },
        {
            "dataset": "toys",
            "user": "u3",
            "split": "train",
            "history": ["toys:i6"],
            "target": "toys:i13",
            "_pad": True,
        },
    ]
    b = FinetuneCollate(enc, with_eval=True)(samples)
    for r, s in enumerate(samples[:2]):
        n = int(b["attention_mask"][r].sum())
        assert b["input_ids"][r, n - 2 : n].tolist() == [enc.mask, enc.eos]
        assert (b["input_ids"][r, n:] == tok.pad_token_id).all() and (b["item_index"][r, n:] == 0).all()
        lab = enc.target_labels(vocab.item_row(s["target"]))
        assert b["labels"][r, : len(lab)].tolist() == lab and (b["labels"][r, len(lab) :] == IGNORE).all()
        assert int(b["target_items"][r]) == vocab.item_row(s["target"]) - 1
    assert (b["labels"][2] == IGNORE).all() and int(b["target_items"][2]) == -1 and not b["is_real"][2]
    # The loss is CE over label tokens only; a batch with no labels gives 0, not NaN.
    logits = torch.randn(3, b["labels"].shape[1], 50)
    keep = b["labels"] != IGNORE
    manual = -torch.log_softmax(logits, -1)[keep].gather(1, b["labels"][keep][:, None]).mean()
    torch.testing.assert_close(token_cross_entropy(logits, b["labels"]), manual)
    assert token_cross_entropy(logits, torch.full_like(b["labels"], IGNORE)).item() == 0.0
    with pytest.raises(ValueError, match="toys:i99"):
        FinetuneCollate(enc)([{**samples[0], "target": "toys:i99"}])


# ------------------------------------------------------------------------------------------ beam search


def _brute_force_scores(model, batch, row: int, enc) -> torch.Tensor:
    """Length-normalised log-prob (HF's sum/len, eos counted) of every item for query ``row``."""
    n = len(enc.item_tokens)
    labels = torch.full((n, max(len(t) for t in enc.item_tokens) + 1), IGNORE)
    for i, t in enumerate(enc.item_tokens):
        labels[i, : len(t) + 1] = torch.tensor([*t, enc.eos])
    rep = {
        k: batch[k][row : row + 1].expand(n, -1)
        for k in ("input_ids", "attention_mask", "user_index", "item_index")
    }
    from transformers.models.bart.modeling_bart import shift_tokens_right

    conf = model.config
    dec = shift_tokens_right(labels, conf.pad_token_id, conf.decoder_start_token_id)
    with torch.no_grad():
        logp = torch.log_softmax(model(**rep, decoder_input_ids=dec, use_cache=False).logits, -1)
    keep = labels != IGNORE
    tok_lp = logp.gather(2, labels.clamp(min=0)[..., None])[..., 0] * keep
    return tok_lp.sum(1) / keep.sum(1)


@pytest.mark.unit
def test_beam_search_top20_is_exact_distinct_and_valid(corpus, tok_dir, vocab):
    cfg = GenRecConfig(model=ModelConfig(name_or_path="tiny-bart", dropout=0.0, d_model=64, d_ff=128))
    module = build_genrec_module(cfg, corpus, tokenizer=load_tokenizer(tok_dir), vocab=vocab)
    from fusionrec.trainer.decoding import CompiledTrie

    model = module.build_model().eval()
    module.trie = CompiledTrie.build(
        module.encoder.item_token_sequences(),
        decoder_start_token_id=model.config.decoder_start_token_id,
        eos_token_id=model.config.eos_token_id,
    )
    batch = next(iter(module.eval_loader("test")))
    res = constrained_beam_search(
        model.bind(batch["user_index"], batch["item_index"]),
        batch["input_ids"],
        batch["attention_mask"],
        module.trie,
        num_beams=20,
        top_k=20,
    )
    assert res.items.shape == (len(batch["input_ids"]), 20)
    for row in res.items.tolist():
        assert len(set(row)) == 20 and all(0 <= i < vocab.num_items for i in row)
    # With as many beams as items, beam search is exhaustive: its ranking = brute-force scoring of all items.
    wide = constrained_beam_search(
        model.bind(batch["user_index"][:2], batch["item_index"][:2]),
        batch["input_ids"][:2],
        batch["attention_mask"][:2],
        module.trie,
        num_beams=vocab.num_items,
        top_k=20,
    )
    for r in range(2):
        scores = _brute_force_scores(model, batch, r, module.encoder)
        assert wide.items[r].tolist() == torch.argsort(scores, descending=True)[:20].tolist()
        torch.testing.assert_close(
            wide.scores[r], scores.sort(descending=True).values[:20].float(), atol=1e-4, rtol=0
        )


# ------------------------------------------------------------------------------------------ configs


@pytest.mark.unit
@pytest.mark.parametrize("name", ["genrec_tiny", "genrec_paper"])
def test_shipped_configs_validate(name):
    data = load_toml(REPO / "launch" / "configs" / f"{name}.toml")
    cfg = from_dict(GenRecConfig, data["genrec"], "genrec")
    train = TrainConfig.from_dict(data["train"])
    if name == "genrec_paper":  # paper §7.1: BART-base, AdamW lr = wd = 1e-5, 5% warmup, beam 20, 512 tokens
        assert cfg.model.name_or_path == "facebook/bart-base" and cfg.tokenizer_from_model
        assert (train.optim.lr, train.optim.weight_decay) == (1e-5, 1e-5)
        assert train.deepspeed.micro_batch_size * train.deepspeed.grad_accum == 16
        assert cfg.num_beams == cfg.top_k == 20 and cfg.data.max_input_tokens == 512
        assert cfg.finetune_epochs == 25
        assert train.optim.warmup_steps == round(0.05 * train.optim.total_steps)
    else:
        assert cfg.model.name_or_path == "tiny-bart"
    with pytest.raises(ConfigError, match="genrec.data.max_histroy"):
        from_dict(GenRecConfig, {**data["genrec"], "data": {"max_histroy": 3}}, "genrec")
    with pytest.raises(ConfigError, match="genrec.bogus"):
        from_dict(GenRecConfig, {**data["genrec"], "bogus": 1}, "genrec")
    with pytest.raises(ValueError, match="train.optim.lrr"):
        TrainConfig.from_dict({**data["train"], "optim": {"lrr": 1.0}})


@pytest.mark.unit
def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="leak"):
        GenRecConfig(finetune_splits=["test"])
    with pytest.raises(ValueError, match="BART"):
        GenRecConfig(model=ModelConfig(name_or_path="tiny-t5"))
    with pytest.raises(ValueError, match="top_k"):
        GenRecConfig(num_beams=10, top_k=20)
    assert [n for n, _ in GenRecConfig(pretrain_epochs=0).phase_lengths()] == ["finetune"]


@pytest.mark.unit
def test_val_loader_gives_every_validation_the_same_batches(corpus, tok_dir, vocab):
    """The Trainer iterates its val_loader at every validation; a one-pass ShardLoader made every validation
    after the first empty."""
    cfg = GenRecConfig(model=ModelConfig(name_or_path="tiny-bart", d_model=64, d_ff=128), eval_batch_size=8)
    module = build_genrec_module(cfg, corpus, tokenizer=load_tokenizer(tok_dir), vocab=vocab)
    loader = module.val_loader("test")
    passes = [[b["input_ids"] for b in loader] for _ in range(2)]
    assert len(passes[0]) > 0 and len(passes[0]) == len(passes[1])
    assert all(torch.equal(a, b) for a, b in zip(*passes, strict=True))
    one_pass = module.eval_loader("test")
    assert len(list(one_pass)) == len(passes[0]) and list(one_pass) == []  # the bug this guards against


def test_module_state_carries_vocab_and_rejects_another(corpus, tok_dir, vocab):
    cfg = GenRecConfig()
    module = build_genrec_module(cfg, corpus, tokenizer=load_tokenizer(tok_dir), vocab=vocab)
    state = module.state_dict()
    assert state["vocab"]["items"] == list(vocab.items) and state["vocab"]["users"] == list(vocab.users)
    module.load_state_dict(state)
    other = GenRecVocab(vocab.users, vocab.items[:-1])
    with pytest.raises(ValueError, match="differs from this corpus"):
        module.load_state_dict({**state, "vocab": other.state_dict()})
    with pytest.raises(RuntimeError, match="configure"):
        module.train_loader("finetune")


# ------------------------------------------------------------------------------------------ ZeRO-2, 2 ranks


def _train_rank(corpus: str, tok_dir: str, run_dir: str) -> dict:
    from fusionrec.trainer.callbacks import HistoryCallback
    from fusionrec.trainer.config import DeepSpeedConfig, OptimConfig
    from fusionrec.trainer.loop import Trainer
    from fusionrec.trainer.recipes.toy.module import weights_fingerprint
    from fusionrec.trainer.strategy import DeepspeedStrategy

    ds = DeepSpeedConfig(zero_stage=2, micro_batch_size=4)
    cfg = TrainConfig(
        run_dir=run_dir,
        max_steps=16,
        log_every=1,
        tensorboard=False,
        progress=False,
        deepspeed=ds,
        optim=OptimConfig(lr=3e-3),
    )
    cfg.checkpoint.save_at_end = False
    gcfg = GenRecConfig(
        model=ModelConfig(name_or_path="tiny-bart", dropout=0.0, d_model=64, d_ff=128),
        pretrain_steps=6,
        finetune_steps=10,
        eval_split="test",
        eval_batch_size=8,
    )
    strategy = DeepspeedStrategy(ds)
    strategy.setup()
    module = build_genrec_module(gcfg, corpus, tokenizer=load_tokenizer(tok_dir))
    history = HistoryCallback()
    # The val loader is built before fit (only the process group exists yet): it must still be rank-sharded.
    trainer = Trainer(cfg, strategy, module, [], [history], val_loader=module.eval_loader())
    state = trainer.fit()
    metrics = trainer.validate()
    return {
        "losses": [(k, v) for log in history.logs for k, v in log.items() if k.endswith("/loss")],
        "fingerprint": weights_fingerprint(strategy, trainer.engines),
        "val": metrics,
        "step": state.step,
    }


@pytest.mark.distributed
def test_zero2_two_ranks_loss_decreases_and_weights_identical(corpus, tok_dir, tmp_path):
    out = run_distributed_test(
        _train_rank, world_size=2, corpus=str(corpus), tok_dir=str(tok_dir), run_dir=str(tmp_path / "run")
    )
    r0, r1 = out
    assert r0["step"] == r1["step"] == 16
    assert r0["fingerprint"] == r1["fingerprint"]  # real data-parallel sync under ZeRO-2
    phases = [k for k, _ in r0["losses"]]
    assert phases == ["pretrain/loss"] * 6 + ["finetune/loss"] * 10
    losses = [v for _, v in r0["losses"]]
    assert losses == [v for _, v in r1["losses"]]  # global means, identical on both ranks
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.75 * sum(losses[:3]) / 3, losses
    assert r0["val"] == r1["val"]
    assert r0["val"]["val/count"] == 22  # every user's test sample once, loader padding excluded
    assert 0.0 <= r0["val"]["val/HR@1"] <= r0["val"]["val/HR@5"] <= r0["val"]["val/HR@20"] <= 1.0
