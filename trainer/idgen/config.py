"""The settings of diverse ID generation, torch-free (config trees import them without loading torch):
one diverse beam search call (`DiverseBeamConfig`), Algorithm 1's schedule (`IDGenConfig`), and the normal
form that makes two generated IDs "the same" (`normalize_id`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_WORD = re.compile(r"\w+")


@dataclass
class DiverseBeamConfig:
    """One diverse-beam-search call. Defaults are IDGenRec's: 10 groups of 1 beam, IDs under 10 tokens."""

    num_groups: int = 10
    beams_per_group: int = 1
    diversity_penalty: float = 1.0
    min_new_tokens: int = 1
    max_new_tokens: int = 9
    length_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.num_groups < 1 or self.beams_per_group < 1:
            raise ValueError(
                f"num_groups and beams_per_group must be >= 1, got {self.num_groups}, {self.beams_per_group}"
            )
        if self.diversity_penalty < 0:
            raise ValueError(f"diversity_penalty must be >= 0, got {self.diversity_penalty}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens or self.max_new_tokens < 1:
            raise ValueError(
                f"need 0 <= min_new_tokens <= max_new_tokens and max_new_tokens >= 1, "
                f"got {self.min_new_tokens}, {self.max_new_tokens}"
            )


@dataclass
class IDGenConfig:
    """Algorithm 1's schedule (paper defaults) and the batching of the generator."""

    num_groups: int = 10  # k: candidates per attempt (one beam per group, as in IDGenRec)
    lambda_start: float = 1.0
    lambda_step: float = 1.0
    lambda_max: float = 10.0
    window: int = 10  # length windows [1, 10), [10, 20), ... in tokens
    max_windows: int = 3
    batch_size: int = 64  # items per DBS call
    max_source_len: int = 256  # input tokens of the item text (IDGenRec truncates at 256)
    length_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.num_groups < 1 or self.batch_size < 1 or self.max_source_len < 2:
            raise ValueError(
                f"num_groups, batch_size >= 1 and max_source_len >= 2 required, got "
                f"{self.num_groups}, {self.batch_size}, {self.max_source_len}"
            )
        if not 0 < self.lambda_start <= self.lambda_max or self.lambda_step <= 0:
            raise ValueError(
                f"need 0 < lambda_start <= lambda_max and lambda_step > 0, got "
                f"{self.lambda_start}, {self.lambda_max}, {self.lambda_step}"
            )
        if self.window < 2 or self.max_windows < 1:
            raise ValueError(
                f"window must be >= 2 and max_windows >= 1, got {self.window}, {self.max_windows}"
            )

    @property
    def lambdas_per_window(self) -> int:
        return int(round((self.lambda_max - self.lambda_start) / self.lambda_step)) + 1

    @property
    def max_attempts(self) -> int:
        return self.lambdas_per_window * self.max_windows

    def attempt(self, a: int) -> tuple[int, float]:
        """Attempt number a (0-based) → (length window index, λ)."""
        per = self.lambdas_per_window
        return a // per, self.lambda_start + (a % per) * self.lambda_step

    def beam_config(self, a: int) -> DiverseBeamConfig:
        """Window w allows IDs of [max(1, w·W), (w+1)·W) tokens: EOS is barred before the lower bound and the
        hypothesis (EOS included) is cut at (w+1)·W - 1 new tokens."""
        w, lam = self.attempt(a)
        return DiverseBeamConfig(
            num_groups=self.num_groups,
            beams_per_group=1,
            diversity_penalty=lam,
            min_new_tokens=max(1, w * self.window),
            max_new_tokens=(w + 1) * self.window - 1,
            length_penalty=self.length_penalty,
        )


def normalize_id(text: str) -> str:
    """Words only, lowercase, single spaces: what makes two generated IDs "the same"."""
    return " ".join(_WORD.findall(text.lower()))
