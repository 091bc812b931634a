"""The one tokenizer of an IDGenRec run (both models index it): made once into RUN/tokenizer (trained on the
corpus texts, copied from a pretrained one, or reduced to the pieces the run uses), its files and hash (module
state: a resume must use the same tokenizer), and the check that both models share its vocabulary."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from fusionrec.trainer.idgen.config import normalize_id
from fusionrec.trainer.models.tokenizer import load_tokenizer, reduce_vocab, train_tokenizer
from fusionrec.trainer.prompts import TEMPLATES

log = logging.getLogger(__name__)


def check_shared_vocab(recommender: torch.nn.Module, generator: torch.nn.Module, tokenizer: Any) -> int:
    """Soft IDs are distributions over the generator's vocabulary multiplied into the recommender's embedding
    matrix: both must index the same tokenizer. Returns the shared vocabulary size."""
    v_rec = recommender.get_input_embeddings().num_embeddings
    v_gen = generator.get_input_embeddings().num_embeddings
    if v_rec != v_gen:
        raise ValueError(
            f"recommender vocab {v_rec} != ID generator vocab {v_gen}: they must share one tokenizer"
        )
    if len(tokenizer) > v_rec:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the models' vocabulary is {v_rec}")
    return v_rec


def tokenizer_files(folder: Path) -> dict[str, str]:
    files = {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.json"))}
    if "tokenizer.json" not in files:
        raise ValueError(f"{folder}: no tokenizer.json")
    return files


def tokenizer_sha(files: Mapping[str, str]) -> str:
    return hashlib.sha256(files["tokenizer.json"].encode()).hexdigest()


def materialize_tokenizer(
    cfg: Any, folder: Path, texts: Mapping[str, str], vocab_texts: Callable[[Any], list[str]]
) -> None:
    """Write the run's tokenizer into ``folder`` (rank 0 only): reduced from ``cfg.pretrained_tokenizer`` /
    ``cfg.tokenizer.path`` to the pieces of ``vocab_texts(full tokenizer)`` (``cfg.reduce_vocab``), copied
    from it, or trained on the item texts + templates + digits."""
    if cfg.reduce_vocab:
        src = cfg.pretrained_tokenizer or cfg.tokenizer.path
        _, report = reduce_vocab(src, vocab_texts(load_tokenizer(src)), folder)
        log.info("reduced vocabulary: %s", report)
    elif cfg.pretrained_tokenizer or cfg.tokenizer.path:
        from transformers import AutoTokenizer

        src = cfg.pretrained_tokenizer or cfg.tokenizer.path
        AutoTokenizer.from_pretrained(src).save_pretrained(str(folder))
    else:
        train_tokenizer(tokenizer_corpus(texts), folder, cfg.tokenizer.vocab_size)


def tokenizer_corpus(texts: Mapping[str, str]) -> list[str]:
    """What a run's own tokenizer is trained on: the item texts, the same texts ID-normalised, the prompt
    templates and the digits (so prompt words and number suffixes are never <unk>).

    Textual IDs are normalised words (lower case, no punctuation: `normalize_id`), and prompts and labels are
    made of them. Trained on the raw texts alone, a word that the texts only hold capitalised never becomes a
    piece in its ID form: on the demo world "kids" encoded as k|i|ds and a line name as five pieces, which
    doubled the tokens per ID and made copying a brand or product line from the history a many-token task.
    """
    raw = list(texts.values())
    return raw + [normalize_id(t) for t in raw] + list(TEMPLATES) * 20 + [" ".join("0123456789")] * 20
