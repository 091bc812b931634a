"""LLM rankers (PALR, DMPO): answer-only scoring, the DMPO loss, ranking prompts, retrieval + re-ranking.

Model loading and LoRA live in `fusionrec.trainer.models.causal_lm`; the TrainModules in
`fusionrec.trainer.modules.{dmpo,palr}`. See docs/llm.md.
"""

from fusionrec.trainer.llm.dmpo_loss import DMPOConfig, auc, dmpo_loss, evaluate_auc, precompute_reference
from fusionrec.trainer.llm.scoring import answer_logprobs, score_candidates, score_pairs, sft_loss

__all__ = [
    "DMPOConfig",
    "answer_logprobs",
    "auc",
    "dmpo_loss",
    "evaluate_auc",
    "precompute_reference",
    "score_candidates",
    "score_pairs",
    "sft_loss",
]
