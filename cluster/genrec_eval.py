"""GenRec evaluation on the Ray actor pool, beside the baselines, from a `fusionrec train genrec` checkpoint.

`GenRecScorerFactory` plugs the GenRec recipe (trainer/recipes/genrec: BART + user/item ID embeddings) into
`cluster/evaluator.py` the way `IDGenRecScorerFactory` (cluster/generative.py) plugs IDGenRec: each actor
loads the model, tokenizer and vocabulary once, builds the trie once and ranks batches of users with
`trainer.decoding.constrained_beam_search` on `model.bind(user_index, item_index)`, as
`GenRecModule.recommend` does.

What a GenRec checkpoint holds and what is rebuilt:
- the module state carries the `GenRecVocab` (row <-> user/item, sha256-checked) and the weights are the
  consolidated ``weights/model.safetensors`` of the engine ``"model"``; both are read through
  `trainer.checkpoint_reader` (verified marker, weights_only / safetensors, no DeepSpeed);
- the tokenizer is NOT in the checkpoint: like `fusionrec export` of a GenRec run, it is rebuilt from the
  run's `[genrec]` section (RUN/config.json) and the checkpoint's vocabulary: trained (BPE, deterministic)
  on the ID words, loaded from `tokenizer.path`, or the model's own (`tokenizer_from_model`).

Inputs are the recipe's evaluation inputs (`SequenceEncoder.encode` with ``[MASK]`` appended after the
history, collated by the recipe's `_batch`). The trie holds the evaluated dataset's items with the recipe's
token spans, in vocabulary order: for a corpus of one dataset it is the recipe's trie; for a multi-dataset
corpus each dataset is ranked over its own items (as `IDGenRecScorer` and the baselines rank).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .checkpoint_io import _offline, checkpoint_path, run_config
from .evaluator import UserBatch
from .generative import GenerativeEvalConfig, checkpoint_identity, dataset_item_ids, scorer_fields

if TYPE_CHECKING:  # the recipe's modules import torch/transformers: loaded where used, not on import
    from ..trainer.models.genrec import GenRecForConditionalGeneration
    from ..trainer.recipes.genrec.config import GenRecConfig
    from ..trainer.recipes.genrec.data import GenRecVocab, SequenceEncoder

RECIPES = ("genrec", "idgenrec")  # the recipes `fusionrec evaluate` can score


# ------------------------------------------------------------------------------------------------ run


def run_recipe(checkpoint: str | Path) -> str:
    """'genrec' when the run's config has a `[genrec]` section, else 'idgenrec'.

    Anything that is not recognisably GenRec takes the IDGenRec path unchanged, so an IDGenRec checkpoint
    (or a broken one) gets exactly the errors it got before GenRec could be evaluated. A config holding both
    sections is decided by RUN/run.json, which names the recipe that trained the run.
    """
    path = checkpoint_path(checkpoint).parent.parent / "config.json"
    sections = set(json.loads(path.read_text())) if path.is_file() else set()
    if "genrec" not in sections:
        return "idgenrec"
    if "idgenrec" not in sections:
        return "genrec"
    meta = path.with_name("run.json")
    recipe = json.loads(meta.read_text()).get("recipe") if meta.is_file() else None
    if recipe not in RECIPES:
        raise ValueError(
            f"{path}: has both [genrec] and [idgenrec] sections and {meta} does not say which recipe "
            f"trained the run (got {recipe!r})"
        )
    return recipe


def genrec_section(checkpoint: str | Path) -> GenRecConfig:
    """The run's `[genrec]` section as a typed `GenRecConfig` (checked keys and values)."""
    from ..configtree import from_dict
    from ..trainer.recipes.genrec.config import GenRecConfig

    section = run_config(checkpoint).get("genrec")
    if not isinstance(section, dict):
        raise ValueError(f"{checkpoint}: its run's config.json has no [genrec] section; not a GenRec run")
    return from_dict(GenRecConfig, section, "genrec")


def genrec_vocab(checkpoint: str | Path) -> GenRecVocab:
    """The `GenRecVocab` a verified checkpoint carries (sha256-checked); ValueError without one."""
    from ..trainer.checkpoint_reader import read_module_state
    from ..trainer.recipes.genrec.data import GenRecVocab

    path = checkpoint_path(checkpoint)
    state = read_module_state(path)
    if not isinstance(state.get("vocab"), dict):
        raise ValueError(
            f"checkpoint {path}: has no GenRec vocabulary (module state keys: {sorted(state)}); every GenRec "
            "checkpoint carries the user/item rows its ID embeddings were trained with"
        )
    return GenRecVocab.from_state_dict(state["vocab"])


def genrec_tokenizer(cfg: GenRecConfig, vocab: GenRecVocab) -> Any:
    """The run's tokenizer, rebuilt as `build_genrec_module` built it (the checkpoint does not carry it).

    A trained tokenizer goes to a temporary folder, never to `tokenizer.save_dir`: N actors writing the
    run's folder at once would race, and evaluation must not modify a run.
    """
    from ..trainer.models.tokenizer import build_tokenizer
    from ..trainer.recipes.genrec.data import id_words, prepare_tokenizer

    if cfg.tokenizer_from_model:
        from transformers import AutoTokenizer

        return prepare_tokenizer(AutoTokenizer.from_pretrained(cfg.model.name_or_path))
    tok_cfg = dataclasses.replace(cfg.tokenizer, save_dir="")
    return prepare_tokenizer(build_tokenizer(tok_cfg, corpus=id_words(vocab, cfg.data)))


def load_genrec_for_eval(
    checkpoint: str | Path,
) -> tuple[GenRecForConditionalGeneration, SequenceEncoder, GenRecConfig]:
    """(GenRec model in eval mode, its `SequenceEncoder`, the run's `GenRecConfig`) from a checkpoint, in this
    process: no process group, no DeepSpeed (the model is built as `GenRecModule.build_model` builds it)."""
    _offline()
    from ..trainer.checkpoint_reader import load_weights
    from ..trainer.models.genrec import GenRecForConditionalGeneration
    from ..trainer.models.seq2seq import build_seq2seq
    from ..trainer.recipes.genrec.data import SequenceEncoder

    path = checkpoint_path(checkpoint)
    vocab, cfg = genrec_vocab(path), genrec_section(path)
    tokenizer = genrec_tokenizer(cfg, vocab)
    bart = build_seq2seq(cfg.model, tokenizer=tokenizer)
    model = GenRecForConditionalGeneration.from_bart(
        bart, vocab.num_users, vocab.num_items, seed=cfg.model.seed
    )
    load_weights(model, path, "model")  # GenRecModule.main_engine
    return model.eval(), SequenceEncoder(tokenizer, vocab, cfg.data), cfg


# ------------------------------------------------------------------------------------------------ scorer


class GenRecScorer:
    """Ranks users by trie-constrained beam search; returns item indices of the EvalSet's vocabulary.

    `dataset` is the corpus dataset the users belong to (GenRec users are keyed by dataset and user id).
    """

    def __init__(
        self,
        model: GenRecForConditionalGeneration,
        encoder: SequenceEncoder,
        item_ids: Sequence[str],
        dataset: str,
        cfg: GenerativeEvalConfig,
    ) -> None:
        from ..trainer.decoding import CompiledTrie

        vocab = encoder.vocab
        known = set(vocab.items)
        missing = [i for i in item_ids if i not in known]
        if missing:
            raise ValueError(
                f"{len(missing)} of {len(item_ids)} evaluated items of {dataset!r} are not in the "
                f"checkpoint's GenRec vocabulary ({vocab.num_items} items): {missing[:5]}"
            )
        self.model, self.encoder, self.dataset, self.cfg = model.eval().to(cfg.device), encoder, dataset, cfg
        self.top_k = cfg.top_k
        self.rows = np.asarray([vocab.item_row(i) for i in item_ids], dtype=np.int64)  # eval index -> row
        # Trie index j names vocabulary row rows[trie_to_eval[j]]: items in row order, so a dataset holding
        # every vocabulary item gets the recipe's own trie (item j = row j + 1).
        self.trie_to_eval = np.argsort(self.rows, kind="stable")
        self.eval_to_trie = np.empty_like(self.trie_to_eval)
        self.eval_to_trie[self.trie_to_eval] = np.arange(len(self.rows))
        spans = encoder.item_token_sequences()
        conf = model.config
        self.trie = CompiledTrie.build(
            [spans[r - 1] for r in self.rows[self.trie_to_eval].tolist()],
            (self.rows[self.trie_to_eval] - 1).tolist(),
            decoder_start_token_id=conf.decoder_start_token_id,
            eos_token_id=conf.eos_token_id,
        ).to(cfg.device)

    def encode(self, users: Sequence[str], histories: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        """The recipe's evaluation inputs (`FinetuneCollate`'s encoding: user, history, ``[MASK]``):
        input_ids, attention_mask, user_index, item_index. A user the vocabulary lacks is a ValueError."""
        from ..trainer.recipes.genrec.data import _batch

        enc, vocab = self.encoder, self.encoder.vocab
        encs = [
            enc.encode(vocab.user_row(self.dataset, user), self.rows[hist].tolist())
            for user, hist in zip(users, histories, strict=True)
        ]
        return _batch(encs, [[] for _ in encs], [True] * len(encs), enc.pad)

    def rank(self, batch: UserBatch) -> np.ndarray:
        from ..trainer.decoding import constrained_beam_search

        out = np.full((len(batch.histories), self.top_k), -1, dtype=np.int64)
        for lo in range(0, len(batch.histories), self.cfg.batch_size):
            hists = batch.histories[lo : lo + self.cfg.batch_size]
            inputs = self.encode(batch.user_ids[lo : lo + self.cfg.batch_size], hists)
            inputs = {k: v.to(self.cfg.device) for k, v in inputs.items()}
            exclude = [self.eval_to_trie[h].tolist() for h in hists] if self.cfg.exclude_history else None
            bound = self.model.bind(inputs["user_index"], inputs["item_index"])
            res = constrained_beam_search(bound, inputs["input_ids"], inputs["attention_mask"], self.trie,
                                          self.cfg.num_beams, self.top_k, exclude_items=exclude)  # fmt: skip
            items = res.items.cpu().numpy()
            out[lo : lo + len(hists)] = np.where(items >= 0, self.trie_to_eval[items.clip(min=0)], -1)
        return out


@dataclass
class GenRecScorerFactory:
    """Picklable recipe for an actor's GenRec scorer: checkpoint + the dataset whose items are ranked.

    `dataset_dir` is a processed dataset folder (`items.parquet`: the EvalSet's vocabulary, row order); its
    folder name is the dataset name the corpus' shards (and so the GenRec user keys) carry.
    """

    checkpoint: str
    dataset_dir: str
    top_k: int = 20
    num_beams: int = 20
    batch_size: int = 32
    exclude_history: bool = False
    threads: int = 1
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.config()  # validate in the driver, before any actor starts

    def config(self) -> GenerativeEvalConfig:
        return GenerativeEvalConfig(self.num_beams, self.top_k, self.batch_size, self.exclude_history,
                                    threads=self.threads, device=self.device)  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """What identifies this scorer in a run fingerprint (the checkpoint by its marker's hash)."""
        return scorer_fields(self) | checkpoint_identity(self.checkpoint, type(self).__name__)

    def __call__(self) -> GenRecScorer:
        _offline()
        torch.set_num_threads(self.threads)
        model, encoder, _ = load_genrec_for_eval(self.checkpoint)
        items = dataset_item_ids(self.dataset_dir)
        return GenRecScorer(model, encoder, items, Path(self.dataset_dir).name, self.config())
