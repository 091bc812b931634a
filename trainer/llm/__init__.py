"""What the LLM-ranker recipes (trainer/recipes/dmpo, trainer/recipes/palr) share: answer-only scoring
(`scoring.py`), per-rank batches (`batches.py`), memory estimates (`memory.py`), the ranker export (`export.py`)
and the offline SmolLM2 assets (`assets.py`). Import the modules directly (this package imports nothing).

Model loading and LoRA live in `fusionrec.trainer.models.causal_lm`. See docs/llm.md.
"""
