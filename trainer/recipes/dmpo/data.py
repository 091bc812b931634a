"""DMPO's data: ranking prompts from DMPO-format files and from our own corpora, tokenised with the history
truncated to fit.

A prompt is kept structured (`RankingPrompt`: history items + candidates) until it is rendered, so that a
prompt longer than the context window can lose its OLDEST history items — never a candidate — and the number
of truncated prompts is reported (`fit_prompt`, `TruncationStats`).

DMPO files (paper 003's release): `rec_<domain>_{sft,dpo,eval}_ranking[_k].json`, each record
``{"instruction", "input", "output"}``; for sft `output` is the preferred order, for dpo/eval it is
``[preferred order, dispreferred order]``. A dpo file with k negatives holds k consecutive rows per prompt
group (same user history and positive, one negative each).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from fusionrec.data_pipeline.errors import DataError

# The DMPO paper's template (Table 1), byte-for-byte as in its files; items are rendered " <Title:X> ".
HEAD = "You are an assistant working on {domain} recommendations. Here is the user's history of {noun} they have {verb}: "
MIDDLE = ". Rank the likelihood of the user {verbing} the two {noun} "
DEFAULT_WORDS = {"domain": "movie", "noun": "movies", "verb": "watched", "verbing": "watching"}
# Our many-shot sets from purchase sequences (implicit.py) use the same template with product words.
PRODUCT_WORDS = {"domain": "product", "noun": "products", "verb": "bought", "verbing": "buying"}
WORD_SETS = (DEFAULT_WORDS, PRODUCT_WORDS)
_ITEM = re.compile(r" <Title:.*?> (?= <Title:|$)")


def render_item(title: str) -> str:
    return f" <Title:{title}> "


@dataclass
class RankingPrompt:
    """User history (oldest first) and the two candidates, rendered on demand."""

    history: list[str]  # rendered items " <Title:X> "
    candidates: tuple[str, str]
    words: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_WORDS))

    def render(self, drop_oldest: int = 0) -> str:
        head = HEAD.format(**self.words)
        mid = MIDDLE.format(**self.words)
        hist = "".join(self.history[drop_oldest:])
        return f"{head}{hist}{mid}{self.candidates[0]} and {self.candidates[1]}."


@dataclass
class PreferenceRecord:
    """One row: a prompt, the preferred answer, and (dpo/eval) the dispreferred one."""

    prompt: RankingPrompt
    chosen: str
    rejected: str | None
    source: str  # "file:index" for error messages and reports

    @property
    def positive(self) -> str:
        """The candidate ranked first by the preferred answer."""
        a, b = self.prompt.candidates
        return a if self.chosen == answer(a, b) else b

    @property
    def negative(self) -> str:
        a, b = self.prompt.candidates
        return b if self.positive == a else a


@dataclass
class PreferenceGroup:
    """A DMPO unit: rows sharing user history and positive, one negative each (k = len(rows))."""

    rows: list[PreferenceRecord]

    @property
    def k(self) -> int:
        return len(self.rows)


def answer(first: str, second: str) -> str:
    """The DMPO answer format for rendered items: ' <Title:A> ,  <Title:B> ' (first = more likely)."""
    return f"{first}, {second}"


def parse_instruction(text: str, where: str) -> RankingPrompt:
    """Split a DMPO instruction into history items and candidates; the split must re-render exactly."""
    words = next((w for w in WORD_SETS if text.startswith(HEAD.format(**w))), None)
    head, mid = (HEAD.format(**words), MIDDLE.format(**words)) if words else ("", "")
    if words is None or mid not in text:
        raise DataError(where, None, f"instruction does not follow the DMPO template: {text[:80]!r}...")
    hist_text, _, tail = text[len(head) :].rpartition(mid)
    history = _ITEM.findall(hist_text)
    m = re.fullmatch(r"( <Title:.*?> ) and ( <Title:.*> )\.", tail)
    if "".join(history) != hist_text or m is None:
        raise DataError(where, None, f"cannot split history/candidates of instruction: {text[:80]!r}...")
    prompt = RankingPrompt(history=history, candidates=(m.group(1), m.group(2)), words=dict(words))
    if prompt.render() != text:
        raise DataError(where, None, "instruction does not re-render identically after parsing")
    return prompt


def _check_pair(chosen: str, rejected: str | None, prompt: RankingPrompt, where: str) -> None:
    cands = set(prompt.candidates)
    if len(cands) < 2:
        raise DataError(
            where, None, f"positive equals the negative: both candidates are {prompt.candidates[0]!r}"
        )
    if rejected is None:
        return
    if chosen == rejected:
        raise DataError(where, None, f"preferred and dispreferred answers are identical: {chosen!r}")
    for name, ans in (("preferred", chosen), ("dispreferred", rejected)):
        if ans not in (answer(*prompt.candidates), answer(*reversed(prompt.candidates))):
            raise DataError(where, None, f"{name} answer {ans!r} is not an ordering of the two candidates")


def _read_json_list(path: Path) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(path, err.lineno, f"invalid JSON: {err.msg}") from err
    if not isinstance(data, list):
        raise DataError(path, None, f"expected a JSON list of records, got {type(data).__name__}")
    return data


def load_dmpo_file(path: str | Path) -> list[PreferenceRecord]:
    """Load an sft, dpo or eval file. Record errors name the file and the record index."""
    path = Path(path)
    records: list[PreferenceRecord] = []
    for idx, raw in enumerate(_read_json_list(path)):
        where = f"{path}: record {idx}"
        if not isinstance(raw, dict) or not isinstance(raw.get("instruction"), str):
            raise DataError(path, None, f"record {idx}: needs a string 'instruction'")
        prompt = parse_instruction(raw["instruction"] + raw.get("input", ""), where)
        out = raw.get("output")
        if isinstance(out, str):
            chosen, rejected = out, None
        elif isinstance(out, list) and all(isinstance(o, str) for o in out):
            if len(out) < 2:
                raise DataError(
                    path, None, f"record {idx}: output has no negative (dispreferred) answer: {out!r}"
                )
            if len(out) > 2:
                raise DataError(
                    path, None, f"record {idx}: output must be [preferred, dispreferred], got {len(out)}"
                )
            chosen, rejected = out
        else:
            raise DataError(path, None, f"record {idx}: output must be a string or [preferred, dispreferred]")
        _check_pair(chosen, rejected, prompt, where)
        records.append(PreferenceRecord(prompt, chosen, rejected, where))
    return records


def group_records(
    records: list[PreferenceRecord], k: int, path: str | Path = "<records>"
) -> list[PreferenceGroup]:
    """Consecutive k rows → one group; rows of a group must share the history and the positive item."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(records) % k:
        raise DataError(path, None, f"{len(records)} records is not a multiple of k={k}")
    groups = []
    for start in range(0, len(records), k):
        rows = records[start : start + k]
        for row in rows:
            if row.rejected is None:
                raise DataError(path, None, f"{row.source}: no negative (dispreferred) answer")
            if row.prompt.history != rows[0].prompt.history or row.positive != rows[0].positive:
                raise DataError(
                    path, None, f"{row.source}: group of k={k} mixes users/positives (record {start})"
                )
        negatives = [row.negative for row in rows]
        if rows[0].positive in negatives:
            raise DataError(
                path, None, f"{rows[0].source}: the positive {rows[0].positive!r} is also a negative"
            )
        groups.append(PreferenceGroup(rows))
    return groups


@dataclass
class TruncationStats:
    """How many prompts lost history items to fit the context window (reported, never silent)."""

    prompts: int = 0
    truncated: int = 0
    items_dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"prompts": self.prompts, "truncated": self.truncated, "items_dropped": self.items_dropped}


def fit_prompt(
    tokenizer, prompt: RankingPrompt, answer_tokens: int, max_length: int, stats: TruncationStats, where: str
) -> str:
    """Render `prompt` so that prompt + answer fits `max_length`, dropping the oldest history items first.

    Binary search over the number of dropped items (token counts are monotone in it): O(log n) tokenisations.
    The candidates are never cut; if they alone do not fit, that is a ValueError naming the record.
    """

    def fits(drop: int) -> bool:
        n = len(tokenizer(prompt.render(drop), add_special_tokens=True)["input_ids"])
        return n + answer_tokens <= max_length

    stats.prompts += 1
    if fits(0):
        return prompt.render()
    n_hist = len(prompt.history)
    if not fits(n_hist):
        raise ValueError(
            f"{where}: the candidates and instruction alone exceed max_length={max_length} tokens; "
            "raise model.max_length (candidates are never truncated)"
        )
    lo, hi = 1, n_hist  # smallest drop that fits lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
    stats.truncated += 1
    stats.items_dropped += lo
    return prompt.render(lo)


# ---------------------------------------------------------------- prompts from our own corpora (ratings)


@dataclass
class CorpusPromptConfig:
    """DMPO prompts from rated interactions: positives rated > 3, negatives rated <= 3 (paper §5.1)."""

    k: int = 3  # negatives per user
    max_history: int = 40  # paper: interaction list limited to 40
    min_positives: int = 2  # paper: 5 with 40-item lists; smaller corpora need less
    min_negatives: int = 3
    eval_fraction: float = 0.2
    seed: int = 0
    words: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_WORDS))

    def __post_init__(self) -> None:
        if self.k < 1 or self.max_history < 1:
            raise ValueError(f"k={self.k} and max_history={self.max_history} must be >= 1")
        if self.min_negatives < self.k:
            raise ValueError(
                f"min_negatives={self.min_negatives} < k={self.k}: a user could not give k negatives"
            )
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")


@dataclass
class CorpusPreferences:
    """Preference groups (train) and eval records built from a corpus, with counted skips."""

    groups: list[PreferenceGroup]
    eval_records: list[PreferenceRecord]
    skipped: dict[str, int]


def _user_group(
    user: str, rows: list[tuple[int, str, float]], titles: dict[str, str], cfg: CorpusPromptConfig, rng
) -> PreferenceGroup:
    """One user's group: the latest positive vs k random negatives; the rest (time order) is the history."""
    positives = [item for _, item, r in rows if r > 3]
    negatives = rng.sample([item for _, item, r in rows if r <= 3], cfg.k)
    pos = positives[-1]
    held = {pos, *negatives}
    history = [render_item(titles[i]) for _, i, _ in rows if i not in held][-cfg.max_history :]
    negs = [titles[n] for n in negatives]
    return preference_group(user, history, titles[pos], negs, cfg.words, rng)


def preference_group(
    user: str, history: list[str], positive: str, negatives: list[str], words: dict[str, str], rng
) -> PreferenceGroup:
    """One row per negative title: the rendered history, the positive vs that negative in random order
    (paper Table 1; one `rng.shuffle` per row), preferred answer = positive first."""
    rows = []
    for j, neg in enumerate(negatives):
        pair = [render_item(positive), render_item(neg)]
        chosen, rejected = answer(pair[0], pair[1]), answer(pair[1], pair[0])
        rng.shuffle(pair)
        prompt = RankingPrompt(history, (pair[0], pair[1]), dict(words))
        rows.append(PreferenceRecord(prompt, chosen, rejected, f"user {user} negative {j}"))
    return PreferenceGroup(rows)


def build_corpus_preferences(
    interactions, titles: dict[str, str], cfg: CorpusPromptConfig
) -> CorpusPreferences:
    """Build DMPO groups from an interactions table (user_id, item_id, timestamp, rating — the RawDataset contract).

    Users are split into train/eval by a seeded shuffle; eval users contribute their first row as a pair.
    Rows without a rating or title, and users with too few positives/negatives, are counted in `skipped`.
    """
    skipped = {"no_rating": 0, "no_title": 0, "too_few_positives": 0, "too_few_negatives": 0, "same_title": 0}
    per_user: dict[str, list[tuple[int, str, float]]] = {}
    cols = interactions.select(["user_id", "item_id", "timestamp", "rating"]).to_pydict()
    for user, item, ts, rating in zip(
        cols["user_id"], cols["item_id"], cols["timestamp"], cols["rating"], strict=True
    ):
        if rating is None:
            skipped["no_rating"] += 1
        elif not titles.get(item):
            skipped["no_title"] += 1
        else:
            per_user.setdefault(user, []).append((ts, item, float(rating)))
    rng = random.Random(cfg.seed)
    groups = []
    for user in sorted(per_user):
        rows = sorted(per_user[user], key=lambda r: r[0])
        if sum(r > 3 for _, _, r in rows) < cfg.min_positives:
            skipped["too_few_positives"] += 1
        elif sum(r <= 3 for _, _, r in rows) < cfg.min_negatives:
            skipped["too_few_negatives"] += 1
        else:
            group = _user_group(user, rows, titles, cfg, rng)
            if any(len(set(r.prompt.candidates)) < 2 for r in group.rows):
                skipped["same_title"] += 1  # two items share a title: the pair is not rankable by text
            else:
                groups.append(group)
    rng.shuffle(groups)
    n_eval = int(round(len(groups) * cfg.eval_fraction))
    eval_records = [g.rows[0] for g in groups[:n_eval]]
    return CorpusPreferences(groups[n_eval:], eval_records, skipped)


# ---------------------------------------------------------------- encoding


def encode_record(tokenizer, record: PreferenceRecord, ans: str, max_length: int, stats: TruncationStats):
    """Tokenised (prompt, answer) with the history truncated to fit (import-light: scoring is torch-only)."""
    from fusionrec.trainer.llm.scoring import encode_pair

    n_answer = len(tokenizer(ans, add_special_tokens=False)["input_ids"]) + 1  # + EOS
    text = fit_prompt(tokenizer, record.prompt, n_answer, max_length, stats, record.source)
    return encode_pair(tokenizer, text, ans, max_length, where=record.source)


def encode_groups(tokenizer, groups: list[PreferenceGroup], max_length: int, stats: TruncationStats) -> list:
    """PreferenceGroup → EncodedGroup: (x_1, y_w) and (x_i, y_l,i) for the k rows (paper eq. 3)."""
    from fusionrec.trainer.recipes.dmpo.loss import EncodedGroup

    out = []
    for group in groups:
        chosen = encode_record(tokenizer, group.rows[0], group.rows[0].chosen, max_length, stats)
        rejected = [encode_record(tokenizer, r, r.rejected, max_length, stats) for r in group.rows]
        out.append(EncodedGroup(chosen, rejected))
    return out
