"""Tokenizers for the seq2seq models: load one from a folder, or train a T5-style one from corpus text.

Always `AutoTokenizer.from_pretrained(<folder>)`: in transformers 5, `T5Tokenizer(vocab_file=...)` silently
maps everything to `<unk>` (ENVIRONMENT.md), so a tokenizer is only ever a folder with `tokenizer.json`.
The trained tokenizer mimics T5's conventions (pad=0, eos=1, unk=2, SentencePiece-style (Metaspace) BPE with a
metaspace pre-tokenizer, `</s>` appended by the post-processor) so that tiny T5 models built in code and
the real T5 tokenizer are interchangeable everywhere in the project.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusionrec.trainer.model_config import EOS, PAD, SPECIAL_TOKENS, UNK, TokenizerConfig
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from tokenizers.models import BPE  # noqa: E402
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast  # noqa: E402


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
    _save_atomically(wrapped, Path(out_dir))
    return load_tokenizer(out_dir)


def _save_atomically(tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """save_pretrained into a temporary sibling folder, then rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tokenizer.save_pretrained(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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


# ---------------------------------------------------------------------- vocabulary reduction
@dataclass
class VocabReport:
    """What `reduce_vocab` kept and checked: sizes, and how many texts were verified piece by piece."""

    source: str
    full_size: int
    reduced_size: int
    texts_checked: int
    mismatches: int  # always 0 when `reduce_vocab` returns (a mismatch raises)


def _unigram_model(data: dict, src: Path) -> dict:
    model = data.get("model") or {}
    kind = model.get("type", "Unigram" if "unk_id" in model and "vocab" in model else None)
    if kind != "Unigram" or not isinstance(model.get("vocab"), list):
        raise ValueError(
            f"{src}/tokenizer.json: vocabulary reduction needs a Unigram (SentencePiece) model, got {kind!r}"
        )
    return model


def _remap_ids(node: Any, new_id: Mapping[int, int]) -> Any:
    """The post-processor's special-token ids under the new numbering (its `ids` lists)."""
    if isinstance(node, dict):
        return {
            k: ([new_id[int(i)] for i in v] if k == "ids" else _remap_ids(v, new_id)) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_remap_ids(v, new_id) for v in node]
    return node


def reduce_vocab(
    source: str | Path, texts: Sequence[str], out_dir: str | Path
) -> tuple[PreTrainedTokenizerBase, VocabReport]:
    """A tokenizer folder whose vocabulary is the special tokens + the pieces `texts` use + the source's
    single-character pieces (ids contiguous).

    Why this is exact: a Unigram tokenizer picks, per pre-tokenized word, the segmentation of highest total
    piece score (Viterbi). Restricting the vocabulary to a subset that still holds every text's optimal
    segmentation leaves that segmentation optimal (every remaining candidate was a candidate before), so
    each text tokenizes to the same pieces, only renumbered. Normalizer, pre-tokenizer and scores are kept.
    Verified here on every text (piece strings compared); any mismatch is a ValueError naming the text.
    Special tokens keep their relative order (T5: pad 0, eos 1, unk 2); other pieces keep their original
    order, so the result is a pure function of (source, set of texts).
    """
    src = Path(source)
    full = load_tokenizer(src)
    data = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    model = _unigram_model(data, src)
    texts = list(texts)
    full_enc = full.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    specials = sorted(
        {int(t["id"]) for t in data.get("added_tokens", []) if t.get("special")} & set(full.all_special_ids)
    )
    specials = sorted(set(specials) | {int(model["unk_id"])})
    used = {i for enc in full_enc for i in enc.ids}
    # Single characters ("x" and "▁x") too: texts the corpus does not hold (a generated ID "cream 1207")
    # then still encode without <unk> (Unigram can always fall back to characters).
    used |= {i for i, (piece, _) in enumerate(model["vocab"]) if len(piece.removeprefix("▁")) == 1}
    used = sorted(used - set(specials))
    keep = specials + used
    new_id = {old: new for new, old in enumerate(keep)}
    model["vocab"] = [model["vocab"][i] for i in keep]
    model["unk_id"] = new_id[int(model["unk_id"])]
    data["added_tokens"] = [
        {**t, "id": new_id[int(t["id"])]} for t in data.get("added_tokens", []) if int(t["id"]) in new_id
    ]
    if data.get("post_processor"):
        data["post_processor"] = _remap_ids(data["post_processor"], new_id)
    backend = Tokenizer.from_str(json.dumps(data))
    _verify_same_pieces(texts, full_enc, backend.encode_batch(texts, add_special_tokens=False), src)
    names = {k: getattr(full, k) for k in ("pad_token", "eos_token", "unk_token") if getattr(full, k, None)}
    # decode() must read like the source's (T5 joins " ," -> ","): IDs are decoded from generated tokens.
    names["clean_up_tokenization_spaces"] = bool(getattr(full, "clean_up_tokenization_spaces", False))
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=full.model_max_length, **names
    )
    _save_atomically(wrapped, Path(out_dir))
    report = VocabReport(str(src), len(full), len(keep), len(texts), 0)
    return load_tokenizer(out_dir), report


def _verify_same_pieces(
    texts: Sequence[str], full_enc: Sequence[Any], new_enc: Sequence[Any], src: Path
) -> None:
    bad = [i for i, (a, b) in enumerate(zip(full_enc, new_enc, strict=True)) if a.tokens != b.tokens]
    if bad:
        i = bad[0]
        raise ValueError(
            f"reduced vocabulary of {src} tokenizes {len(bad)} of {len(texts)} texts differently; first: "
            f"{texts[i]!r} -> {new_enc[i].tokens} instead of {full_enc[i].tokens}"
        )
