"""The 10 sequential-recommendation prompt templates (P5 style, IDGenRec §2.1), with exact ID positions.

IDGenRec samples one of 10 near-identical templates per training instance so that the recommender attends
to the item sequence rather than the wording, and evaluates with one fixed template. Differences from the
reference prompts: no dataset name (a foundation model must not be told the platform), the user ID is
optional ("the user" without it), the history keeps the `max_history` most recent items.

Training with soft ID embeddings (IDGenRec §2.5) needs to know which prompt tokens belong to which history
item. `build_prompt` records the exact character span of every inserted ID, and `token_positions` maps the
spans onto token indices with the fast tokenizer's offset mapping — no re-tokenising guesswork.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: PromptConfig is part of torch-free recipe configs
    from transformers import PreTrainedTokenizerBase

# `{user}` always appears as "user {user}" / "User {user}", which reads "the user" / "The user" without an ID.
# Placeholders are space-delimited so that no token can straddle an ID and the surrounding text.
TEMPLATES: tuple[str, ...] = (
    "Considering user {user} has interacted with items {history} . What is the next recommendation for the user ?",
    "Here is the purchase history of user {user} : items {history} . What is the next recommended item for the user ?",
    "User {user} has purchased items {history} , predict the next possible item to be bought by the user .",
    "I find the purchase list of user {user} : items {history} . What other item does the user need next ?",
    "According to the items user {user} has purchased : {history} , can you recommend another item to the user ?",
    "What would user {user} be likely to purchase next after buying items {history} ?",
    "By analyzing the purchases of user {user} : items {history} , what is the next item expected to be bought ?",
    "Can you recommend the next item for user {user} , given the purchases of the user : items {history} ?",
    "After buying items {history} , what is the next item that could be recommended for user {user} ?",
    "User {user} has bought items : {history} . What else do you think the user needs ?",
)
# The terse variant (`prompt.style = "terse"`): one template, ~3 tokens of wording instead of 16-26, for
# throughput-bound runs (a prompt's cost is dominated by its length). Not in the paper: a measured trade-off.
TERSE_TEMPLATES: tuple[str, ...] = ("User {user} : {history}",)
STYLES: dict[str, tuple[str, ...]] = {"p5": TEMPLATES, "terse": TERSE_TEMPLATES}
SEPARATOR = " , "


@dataclass
class PromptConfig:
    """Prompt construction: history cap, template sampling seed, the fixed evaluation template."""

    max_history: int = 20
    eval_template: int = 0
    seed: int = 0
    use_user_id: bool = False
    style: str = "p5"  # "p5": the 10 templates; "terse": TERSE_TEMPLATES

    def __post_init__(self) -> None:
        if self.max_history < 1:
            raise ValueError(f"prompt.max_history must be >= 1, got {self.max_history}")
        if self.style not in STYLES:
            raise ValueError(f"prompt.style must be one of {sorted(STYLES)}, got {self.style!r}")
        if not 0 <= self.eval_template < len(self.templates):
            raise ValueError(
                f"prompt.eval_template must be in [0, {len(self.templates)}) for style "
                f"{self.style!r}, got {self.eval_template}"
            )

    @property
    def templates(self) -> tuple[str, ...]:
        return STYLES[self.style]


@dataclass
class Prompt:
    """A filled template. `item_spans[i]` = (start, end) characters of history item i's ID in `text`."""

    text: str
    template: int
    item_spans: list[tuple[int, int]]
    user_span: tuple[int, int] | None


def choose_template(seed: int, key: str, epoch: int = 0, n: int = len(TEMPLATES)) -> int:
    """The training template of one instance (of ``n``): a stable hash of (seed, epoch, key), so the choice
    does not depend on which rank or worker sees the sample, nor on the order samples arrive in."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n


def cap_history(history: Sequence[str], max_history: int) -> list[str]:
    """The `max_history` most recent items (histories are oldest first)."""
    return list(history[-max_history:])


def build_prompt(
    history_ids: Sequence[str], template: int, user_id: str | None = None, style: str = "p5"
) -> Prompt:
    """Fill template `template` of `style` with the textual IDs of the history (oldest first) and an optional
    user ID."""
    templates = STYLES[style]
    if not 0 <= template < len(templates):
        raise ValueError(f"template must be in [0, {len(templates)}), got {template}")
    if not history_ids:
        raise ValueError("a sequential prompt needs at least one history item")
    for i, tid in enumerate(history_ids):
        if not tid or tid != tid.strip():
            raise ValueError(f"history item {i}: textual ID {tid!r} is empty or has outer whitespace")
    pattern = templates[template]
    if user_id is None:
        pattern = pattern.replace("User {user}", "The user").replace("user {user}", "the user")
    parts: list[str] = []
    pos = 0
    item_spans: list[tuple[int, int]] = []
    user_span: tuple[int, int] | None = None

    def emit(s: str) -> tuple[int, int]:
        nonlocal pos
        parts.append(s)
        pos += len(s)
        return pos - len(s), pos

    for chunk in _split_placeholders(pattern):
        if chunk == "{history}":
            for i, tid in enumerate(history_ids):
                if i:
                    emit(SEPARATOR)
                item_spans.append(emit(tid))
        elif chunk == "{user}":
            user_span = emit(user_id or "")
        else:
            emit(chunk)
    return Prompt("".join(parts), template, item_spans, user_span)


def _split_placeholders(pattern: str) -> list[str]:
    out: list[str] = []
    rest = pattern
    while rest:
        cut = min((i for i in (rest.find("{history}"), rest.find("{user}")) if i >= 0), default=-1)
        if cut < 0:
            out.append(rest)
            break
        end = rest.index("}", cut) + 1
        out.extend(x for x in (rest[:cut], rest[cut:end]) if x)
        rest = rest[end:]
    return out


def token_positions(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> tuple[list[int], list[list[int]]]:
    """Tokenise `prompt.text`; return (input_ids, token indices of each history item's ID).

    A token belongs to an item when its character range overlaps the item's span. A token reaching outside
    the span (other than a leading word-boundary space, as SentencePiece's "▁" adds) would mix an ID with
    its neighbours and is refused with ValueError rather than guessed.
    """
    enc = tokenizer(prompt.text, return_offsets_mapping=True, add_special_tokens=True)
    offsets = enc["offset_mapping"]
    positions: list[list[int]] = []
    for k, (s, e) in enumerate(prompt.item_spans):
        idx = [t for t, (a, b) in enumerate(offsets) if b > a and a < e and b > s]
        for t in idx:
            a, b = offsets[t]
            if b > e or (a < s and not (a == s - 1 and prompt.text[a].isspace())):
                raise ValueError(f"token {t} {offsets[t]} straddles history item {k}'s span {(s, e)}")
        if not idx:
            raise ValueError(f"history item {k}'s span {(s, e)} maps to no token")
        positions.append(idx)
    return enc["input_ids"], positions


def user_key(user: str, history: Sequence[str]) -> str:
    """The user-ID table key of a sample: the user and the last item before its target.

    A user ID is a profile of the items *before* the evaluated target (trainer/idgen/user_ids.py), so it is
    looked up per (user, prefix), not per user. Items are unique within a user's sequence (preprocess
    dedupes (user, item) pairs), so the last history item names the prefix; it is the same whether the
    history was capped (shard samples) or not (the evaluator's EvalSet).
    """
    if not history:
        raise ValueError(f"user {user!r}: a user ID needs at least one history item")
    return f"{user}\t{history[-1]}"


def user_of_key(key: str) -> str:
    """The user of a :func:`user_key`."""
    return key.split("\t", 1)[0]


def lookup_user_id(
    user_ids: Mapping[str, str], user: str, history: Sequence[str], where: str = "the user ID table"
) -> str:
    """The textual user ID of (user, history) in ``user_ids`` (keyed by :func:`user_key`); ValueError naming
    the user, its last history item and ``where`` when it has none."""
    key = user_key(user, history)
    if key not in user_ids:
        raise ValueError(f"user {user!r} (last history item {history[-1]!r}) has no user ID in {where}")
    return user_ids[key]


class PromptBuilder:
    """Samples → (prompt, target ID text). Textual IDs come from the current ID table(s) at load time.

    ``user_ids`` (with ``use_user_id``) maps :func:`user_key` (user, last history item) → the user's textual
    ID for that prefix; its tokens stay hard tokens in every phase (only item IDs become soft).
    """

    def __init__(
        self, cfg: PromptConfig, item_ids: Mapping[str, str], user_ids: Mapping[str, str] | None = None
    ):
        if cfg.use_user_id and user_ids is None:
            raise ValueError("prompt.use_user_id is set but no user ID table was given")
        self.cfg, self.item_ids, self.user_ids = cfg, item_ids, user_ids

    def _textual(self, item: str) -> str:
        try:
            return self.item_ids[item]
        except KeyError:
            raise ValueError(f"item {item!r} has no textual ID in the current ID table") from None

    def build(self, sample: Mapping, train: bool, epoch: int = 0) -> tuple[Prompt, str]:
        """`sample` = {dataset, user, split, history, target}; training samples draw their template with
        `choose_template`, evaluation always uses `cfg.eval_template`."""
        history = cap_history(sample["history"], self.cfg.max_history)
        key = f"{sample.get('dataset', '')}/{sample['user']}/{len(sample['history'])}/{sample['target']}"
        n = len(self.cfg.templates)
        template = choose_template(self.cfg.seed, key, epoch, n) if train else self.cfg.eval_template
        user = None
        if self.cfg.use_user_id:
            user = lookup_user_id(self.user_ids, sample["user"], sample["history"])
        prompt = build_prompt([self._textual(i) for i in history], template, user, self.cfg.style)
        return prompt, self._textual(sample["target"])
