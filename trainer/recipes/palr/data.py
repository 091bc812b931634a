"""PALR's data: the "Recommend" / "Recommend_Retrieval" instruction tasks (paper 002 §2.2) and their
settings; torch-free (the `[palr]` section holds PALRConfig)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class PALRTaskConfig:
    """PALR "Recommend" / "Recommend_Retrieval" instructions."""

    max_history: int = 20  # paper: at most 20 history items
    n_targets: int = 10  # "Recommend 10 other items"
    swap_prob: float = 0.1  # paper: randomly swap items between instruction and label
    noun: str = "items"
    verb_phrase: str = "User has purchased the following products"

    def __post_init__(self) -> None:
        if self.max_history < 1 or self.n_targets < 1:
            raise ValueError(f"max_history={self.max_history}, n_targets={self.n_targets} must be >= 1")
        if not 0.0 <= self.swap_prob <= 1.0:
            raise ValueError(f"swap_prob must be in [0, 1], got {self.swap_prob}")


@dataclass
class PALRConfig:
    """Retrieval depth, share of users fine-tuned on (paper: 20%), negatives per Recommend_Retrieval sample."""

    top_n: int = 50
    finetune_share: float = 0.2
    negatives: int = 9
    ks: tuple[int, ...] = (1, 5, 10)
    seed: int = 0
    tasks: PALRTaskConfig = field(default_factory=PALRTaskConfig)

    def __post_init__(self) -> None:
        if self.top_n < 1 or self.negatives < 0:
            raise ValueError(f"top_n={self.top_n} must be >= 1 and negatives={self.negatives} >= 0")
        if not 0.0 < self.finetune_share <= 1.0:
            raise ValueError(f"finetune_share must be in (0, 1], got {self.finetune_share}")
        self.ks = tuple(self.ks)


def _quoted(items: list[str]) -> str:
    return ", ".join(f'"{t}"' for t in items)


def palr_prompt(history: list[str], candidates: list[str] | None, cfg: PALRTaskConfig) -> str:
    """Instruction + input text; with `candidates` it is the Recommend_Retrieval task."""
    hist = history[-cfg.max_history :]
    if candidates is None:
        task = f"Recommend {cfg.n_targets} other {cfg.noun} based on user's history."
        return f"### Instruction: {task}\n### Input: {cfg.verb_phrase} {_quoted(hist)}.\n### Output:"
    task = f"Recommend {cfg.n_targets} other {cfg.noun} based on user's history from the candidate list."
    return (
        f"### Instruction: {task}\n### Input: {cfg.verb_phrase} {_quoted(hist)}. "
        f"The candidates are {_quoted(candidates)}.\n### Output:"
    )


def palr_answer(targets: list[str]) -> str:
    return " " + _quoted(targets)


def palr_example(
    history: list[str],
    targets: list[str],
    candidates: list[str] | None,
    cfg: PALRTaskConfig,
    rng: random.Random,
) -> tuple[str, str]:
    """(prompt, answer) for one user; random history/label item swaps as in the paper (a regulariser)."""
    history, targets = list(history[-cfg.max_history :]), list(targets[: cfg.n_targets])
    for i in range(len(targets)):
        if history and rng.random() < cfg.swap_prob:
            j = rng.randrange(len(history))
            history[j], targets[i] = targets[i], history[j]
    if candidates is not None:
        missing = [t for t in targets if t not in candidates]
        candidates = list(candidates) + missing  # the candidate list always contains every target
        rng.shuffle(candidates)
    return palr_prompt(history, candidates, cfg), palr_answer(targets)
