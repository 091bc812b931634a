"""Tokenizers for the seq2seq models: load one from a folder, or train a T5-style one from corpus text.

Always `AutoTokenizer.from_pretrained(<folder>)`: in transformers 5, `T5Tokenizer(vocab_file=...)` silently
maps everything to `<unk>` (ENVIRONMENT.md), so a tokenizer is only ever a folder with `tokenizer.json`.
The trained tokenizer mimics T5's conventions (pad=0, eos=1, unk=2, SentencePiece-style (Metaspace) BPE with a
metaspace pre-tokenizer, `</s>` appended by the post-processor) so that tiny T5 models built in code and
the real T5 tokenizer are interchangeable everywhere in the project.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # must precede the transformers import (ENVIRONMENT.md)

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from tokenizers.models import BPE  # noqa: E402
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast  # noqa: E402

# T5's special-token layout: ids 0, 1, 2 in this order (the model configs built in code rely on it).
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, EOS, UNK)


@dataclass
class TokenizerConfig:
    """Where the tokenizer comes from.

    `path` set: load that folder (must hold `tokenizer.json`). `path` empty: train a BPE tokenizer of
    `vocab_size` pieces on the corpus text (the offline default) and save it under `save_dir` if given.
    """

    path: str = ""
    vocab_size: int = 8000
    save_dir: str = ""

    def __post_init__(self) -> None:
        if self.vocab_size < len(SPECIAL_TOKENS) + 32:
            raise ValueError(
                f"tokenizer.vocab_size must be >= {len(SPECIAL_TOKENS) + 32}, got {self.vocab_size}"
            )
        if self.path and not Path(self.path).is_dir():
            raise ValueError(
                f"tokenizer.path={self.path!r} is not a folder (a tokenizer is a folder with tokenizer.json)"
            )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer folder with AutoTokenizer (never a bare vocab file, see the module docstring)."""
    folder = Path(path)
    if not (folder / "tokenizer.json").is_file():
        raise ValueError(
            f"{folder}: no tokenizer.json (a tokenizer must be a folder loadable by AutoTokenizer)"
        )
    return AutoTokenizer.from_pretrained(str(folder))


def _bpe_backend(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A SentencePiece-style (Metaspace) BPE model trained by `tokenizers` (1-3 s on ~6 MB).

    BPE, not Unigram: `tokenizers`' Unigram trainer is not reproducible (three trainings on the same text
    gave three vocabularies here, even single-threaded), and a run that re-trains its tokenizer on resume
    or export must get the very same ids. BPE training is deterministic (tests/test_tokenizer_determinism.py).
    """
    backend = Tokenizer(BPE(unk_token=UNK))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(r"\s+", " ")])
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    backend.train_from_iterator(texts, trainer=trainer)
    eos_id = backend.token_to_id(EOS)
    # T5 convention: the encoder input and the labels both end with </s>.
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos_id)]
    )
    return backend


def train_tokenizer(
    texts: Iterable[str], out_dir: str | Path, vocab_size: int = 8000
) -> PreTrainedTokenizerBase:
    """Train a T5-style tokenizer on `texts`, save it atomically as a folder, and load it back.

    The folder is written under a temporary name and renamed, so a crash never leaves a half tokenizer
    that a later run would silently load.
    """
    backend = _bpe_backend(texts, vocab_size)
    ids = [backend.token_to_id(t) for t in SPECIAL_TOKENS]
    assert ids == [0, 1, 2], f"special tokens must be ids 0,1,2 (T5 layout), got {ids}"
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, eos_token=EOS, unk_token=UNK, model_max_length=512
    )
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        wrapped.save_pretrained(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return load_tokenizer(out)


def build_tokenizer(cfg: TokenizerConfig, corpus: Iterable[str] | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer named by `cfg`: loaded from `cfg.path`, or trained on `corpus` (required then)."""
    if cfg.path:
        return load_tokenizer(cfg.path)
    if corpus is None:
        raise ValueError(
            "tokenizer.path is empty, so a corpus is needed to train a tokenizer; none was given"
        )
    if cfg.save_dir:
        return train_tokenizer(corpus, cfg.save_dir, cfg.vocab_size)
    with tempfile.TemporaryDirectory(prefix="fusionrec-tok-") as tmp:
        return train_tokenizer(corpus, Path(tmp) / "tokenizer", cfg.vocab_size)


def encode_strict(tokenizer: PreTrainedTokenizerBase, text: str, what: str) -> list[int]:
    """Token ids of `text` (with the tokenizer's special tokens), refusing any `<unk>`.

    An ID that maps to `<unk>` cannot be decoded back, so the trie would hold an item no beam can reach
    (or two items that look the same): that must fail loudly, naming `what` (e.g. the item).
    """
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    unk = tokenizer.unk_token_id
    if unk is not None and unk in ids:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ValueError(f"{what}: the tokenizer cannot encode {text!r} (unknown token in {pieces})")
    return ids
