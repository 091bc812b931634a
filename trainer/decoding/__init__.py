"""Compiled prefix trie and vectorised trie-constrained beam search (see trie.py, beam_search.py)."""

from .beam_search import BeamResult, BeamSearchConfig, StepTimings, beam_search, constrained_beam_search
from .trie import CompiledTrie

__all__ = [
    "BeamResult",
    "BeamSearchConfig",
    "CompiledTrie",
    "StepTimings",
    "beam_search",
    "constrained_beam_search",
]
