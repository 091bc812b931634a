"""The run's own tokenizer (idgenrec without a pretrained one) is trained for the IDs it will encode."""

from __future__ import annotations

from fusionrec.trainer.models.tokenizer import train_tokenizer
from fusionrec.trainer.recipes.idgenrec.tokenizer import tokenizer_corpus

# Titles hold words capitalised; textual IDs hold them ID-normalised (lower case, no punctuation).
TEXTS = {
    f"i{k}": f"title: {brand} Kids {line} Lotion, Blue; brand: {brand}"
    for k, (brand, line) in enumerate(
        [("Acon", "ZenFit"), ("Belia", "AquaBoost"), ("Corine", "FlexShield"), ("Acon", "AquaBoost")] * 25
    )
}
IDS = ["acon kids zenfit", "belia kids aquaboost", "corine kids flexshield"]


def _pieces(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def test_id_words_are_single_pieces(tmp_path):
    tok = train_tokenizer(tokenizer_corpus(TEXTS), tmp_path / "tok", vocab_size=300)
    assert [_pieces(tok, i) for i in IDS] == [3, 3, 3]  # one piece per ID word
    assert tok.unk_token_id not in tok(" ".join(IDS))["input_ids"]


def test_raw_texts_alone_split_the_id_words(tmp_path):
    """The control that makes the test above meaningful: trained on the raw texts only, the lower-case ID
    words are not pieces (what the demo's runs did before tokenizer_corpus)."""
    tok = train_tokenizer(list(TEXTS.values()), tmp_path / "tok", vocab_size=300)
    assert all(_pieces(tok, i) > 3 for i in IDS)
