"""User IDs (IDGenRec §2.1, Fig. 2, Table 6): a short textual "high-level profile" of the user.

The paper generates the user ID "by the same ID generator, taking the meta information of all items in the
user history"; it is optional and shown beneficial (Table 6). Its reference code joined the *whole*
sequence, test item included (its issue #1). Fixing only that (one ID per user from the training part)
still leaks inside training: a training sample whose target is item t would be prompted with a user ID
built from t and later items, a hint the model never gets at test time. So here:

**Leakage rule.** A user ID is a function of one sample's *history* (the items strictly before its
target), keyed by :func:`~fusionrec.trainer.prompts.user_key` = (user, last history item). No prompt, in
any split, carries a user ID built from its own target or later items. The valid sample's ID is built from
the training part (items[:-2]), the test sample's from items[:-1] (the valid target is history there).

**Profile window.** The generator reads the texts of the history items, oldest first, joined by ``"; "``,
up to ``max_source_len`` tokens (the paper's T5 truncates its input the same way): the window is the
oldest items until their token count (+1 per separator) reaches the budget. Longer histories share the
window of their prefix, and the generator runs once per distinct window, not once per sample. With short
item texts that saves little: on Amazon Beauty (T5 tokenizer, item texts ~23 tokens, budget 256) the
176,139 samples have 131,303 distinct windows (4.9 items on average), i.e. a user-table regeneration is
~11x the generator calls of the item table's first attempt (12,101 items).

**Generation.** The first attempt of Algorithm 1 (diverse beam search, ``num_groups`` candidates at
``lambda_start``, IDs of [1, window) tokens), best non-empty encodable candidate. No uniqueness walk: a user
ID profiles, it is never decoded back to a user, so two users may share one; the table reports how many
(``shared_ids``, ``users_in_shared``). A window without a usable candidate takes its title ID (counted as
``fallback``).

**Title IDs** (for ``initial_ids = "title"`` runs): the ``words`` most frequent normalised title words of
the sample's whole history (no token budget: counting words is cheap), ties broken by first appearance;
words of fewer than 3 characters, digits-only words, a short stop-word list and words the tokenizer cannot
encode are skipped; an empty result is ``"user"``. A generated ID without a usable candidate falls back to
the title ID of its window.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fusionrec.fileio import atomic_write_text
from fusionrec.trainer.idgen.candidates import LocalGenerator
from fusionrec.trainer.idgen.generator import IDGenConfig, _encodable_fn, normalize_id
from fusionrec.trainer.prompts import user_key, user_of_key
from transformers import PreTrainedModel, PreTrainedTokenizerBase

KINDS = ("title", "generator")
FORMAT = "fusionrec-useridtable"
SEPARATOR = "; "
STOPWORDS = frozenset(
    "and the for with from set pack per you your our all new not are its has this that".split()
)


class UserIDTable:
    """An immutable mapping user key (user, last history item) → textual user ID, with a content hash.

    IDs may repeat across keys (see the module docstring); the version names the round and the content.
    """

    def __init__(
        self, ids: Mapping[str, str], kind: str, round: int = 0, stats: Mapping[str, Any] | None = None
    ):
        if kind not in KINDS:
            raise ValueError(f"user ID table kind must be one of {KINDS}, got {kind!r}")
        if round < 0:
            raise ValueError(f"user ID table round must be >= 0, got {round}")
        for key, tid in ids.items():
            if not isinstance(tid, str) or not tid.strip() or tid != tid.strip():
                raise ValueError(
                    f"user key {key!r}: textual user ID {tid!r} is empty or has outer whitespace"
                )
        self._ids, self.kind, self.round = dict(ids), kind, round
        self.stats: dict[str, Any] = dict(stats or {})
        payload = json.dumps(
            ["user", kind, sorted(self._ids.items())], ensure_ascii=False, separators=(",", ":")
        )
        self.hash = hashlib.sha256(payload.encode("utf-8")).hexdigest()

    @property
    def version(self) -> str:
        """``u<round>-<hash prefix>`` (item tables are ``r<round>-...``)."""
        return f"u{self.round}-{self.hash[:12]}"

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, key: object) -> bool:
        return key in self._ids

    def __getitem__(self, key: str) -> str:
        return self._ids[key]

    def as_dict(self) -> dict[str, str]:
        return dict(self._ids)

    # -- persistence: the module state of a checkpoint, and a JSON file beside the item tables -----------
    def to_state(self) -> dict[str, Any]:
        return {"ids": dict(self._ids), "kind": self.kind, "round": self.round, "sha256": self.hash,
                "stats": dict(self.stats)}  # fmt: skip

    @classmethod
    def from_state(cls, state: Mapping[str, Any], where: str = "checkpoint") -> UserIDTable:
        table = cls(state["ids"], state["kind"], int(state["round"]), state.get("stats"))
        if table.hash != state["sha256"]:
            raise ValueError(
                f"{where}: user ID table hash {table.hash[:12]} != recorded {state['sha256'][:12]}"
            )
        return table

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"format": FORMAT, "schema_version": 1, **self.to_state()}
        return atomic_write_text(path, json.dumps(doc, ensure_ascii=False, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> UserIDTable:
        path = Path(path)
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT or doc.get("schema_version") != 1:
            raise ValueError(f"{path}: not a {FORMAT} v1 file")
        return cls.from_state(doc, where=str(path))


# ---------------------------------------------------------------------- windows
def profile_window(history: Sequence[str], token_counts: Mapping[str, int], budget: int) -> tuple[str, ...]:
    """The oldest history items whose texts fill ``budget`` tokens (+1 per separator); all when shorter."""
    total = 0
    for k, item in enumerate(history):
        total += token_counts[item] + (1 if k else 0)
        if total >= budget:
            return tuple(history[: k + 1])
    return tuple(history)


def user_histories(samples: Iterable[Mapping[str, Any]]) -> dict[str, tuple[str, ...]]:
    """user key → history of every sample (a sample = {user, history, ...}; its target is never read).
    Two samples with one key must have one history (a ValueError otherwise)."""
    out: dict[str, tuple[str, ...]] = {}
    for s in samples:
        key, history = user_key(s["user"], s["history"]), tuple(s["history"])
        if out.setdefault(key, history) != history:
            raise ValueError(
                f"user key {key!r}: two samples end their history at this item with other histories"
            )
    return out


def profile_windows(
    histories: Mapping[str, Sequence[str]], token_counts: Mapping[str, int], budget: int
) -> dict[str, tuple[str, ...]]:
    """user key → its profile window (the generator's input items)."""
    return {key: profile_window(h, token_counts, budget) for key, h in histories.items()}


def share_stats(ids: Mapping[str, str]) -> dict[str, int]:
    """How many user IDs are held by more than one user (a user may hold several IDs over its prefixes)."""
    holders: dict[str, set[str]] = {}
    for key, tid in ids.items():
        holders.setdefault(tid, set()).add(user_of_key(key))
    shared = {tid for tid, users in holders.items() if len(users) > 1}
    users = {u for tid in shared for u in holders[tid]}
    all_users = {user_of_key(key) for key in ids}
    return {"entries": len(ids), "users": len(all_users), "distinct_ids": len(holders),
            "shared_ids": len(shared), "users_in_shared": len(users)}  # fmt: skip


# ---------------------------------------------------------------------- title user IDs
def title_words(title: str, encodable: Callable[[str], bool]) -> list[str]:
    """The usable words of one title, in order (the filter of the module docstring)."""
    words = normalize_id(title).split()
    return [w for w in words if len(w) >= 3 and not w.isdigit() and w not in STOPWORDS and encodable(w)]


def _top_words(word_lists: Iterable[list[str]], n: int) -> str:
    counts: Counter[str] = Counter()
    first: dict[str, int] = {}
    for ws in word_lists:
        for w in ws:
            first.setdefault(w, len(first))
            counts[w] += 1
    return " ".join(sorted(counts, key=lambda w: (-counts[w], first[w]))[:n]) or "user"


def title_profile(
    items: Sequence[str], titles: Mapping[str, str], words: int, encodable: Callable[[str], bool]
) -> str:
    """The ``words`` most frequent usable title words of ``items`` (ties: first appearance), or "user"."""
    return _top_words((title_words(titles[i], encodable) for i in items), words)


def title_user_table(
    histories: Mapping[str, Sequence[str]],
    titles: Mapping[str, str],
    words: int,
    encodable: Callable[[str], bool],
    round: int = 0,
) -> UserIDTable:
    """Title IDs of every key's history (module docstring). Each title's words are filtered once and each
    word is checked by the tokenizer once (per-word tokenizer calls dominated: 5 min on Beauty without)."""
    known: dict[str, bool] = {}

    def memo(w: str) -> bool:
        if w not in known:
            known[w] = encodable(w)
        return known[w]

    per_item: dict[str, list[str]] = {}
    ids = {}
    for key, h in histories.items():
        for i in h:
            if i not in per_item:
                per_item[i] = title_words(titles[i], memo)
        ids[key] = _top_words((per_item[i] for i in h), words)
    return UserIDTable(ids, "title", round, {"initial": "title", **share_stats(ids)})


# ---------------------------------------------------------------------- generated user IDs
def generate_user_table(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    histories: Mapping[str, Sequence[str]],
    item_texts: Mapping[str, str],
    titles: Mapping[str, str],
    cfg: IDGenConfig,
    words: int,
    round: int = 0,
) -> UserIDTable:
    """Generated user IDs: attempt 0 of Algorithm 1 on each distinct profile window's joined texts, the
    window cut at ``cfg.max_source_len`` tokens (module docstring)."""
    needed = {i: item_texts[i] for h in histories.values() for i in h}
    windows = profile_windows(histories, item_token_counts(tokenizer, needed), cfg.max_source_len)
    distinct = list(dict.fromkeys(windows.values()))
    texts = {f"w{k}": SEPARATOR.join(item_texts[i] for i in w) for k, w in enumerate(distinct)}
    source, encodable = LocalGenerator(model, tokenizer, cfg, texts, track_range=False), _encodable_fn(tokenizer)
    keys = list(texts)
    first: dict[str, list[str]] = {}
    for s in range(0, len(keys), cfg.batch_size):  # attempt 0 only: no walk, no retries
        chunk = keys[s : s + cfg.batch_size]
        first |= {k: cands for k, (cands, _) in zip(chunk, source.run(0, chunk), strict=True)}
    by_window: dict[tuple[str, ...], str] = {}
    fallback = 0
    for k, window in enumerate(distinct):
        cand = next((c for c in first[f"w{k}"] if c and encodable(c)), None)
        if cand is None:
            cand, fallback = title_profile(window, titles, words, encodable), fallback + 1
        by_window[window] = cand
    ids = {key: by_window[w] for key, w in windows.items()}
    stats = {"windows": len(distinct), "fallback": fallback, **share_stats(ids)}
    return UserIDTable(ids, "generator", round, stats)


def item_token_counts(tokenizer: PreTrainedTokenizerBase, texts: Mapping[str, str]) -> dict[str, int]:
    """Tokens of each item text (no special tokens), one batched call: the window arithmetic's unit."""
    items = list(texts)
    encoded = tokenizer([texts[i] for i in items], add_special_tokens=False)["input_ids"]
    return {i: len(e) for i, e in zip(items, encoded, strict=True)}
