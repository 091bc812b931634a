"""LLM rankers (PALR, DMPO): answer-only scoring, the DMPO objective, ranking prompts and data, memory estimates,
retrieval + re-ranking, export. Import the modules directly (this package imports nothing, so that the
torch-free parts, e.g. the prompt/data configs of data.py, stay torch-free).

Model loading and LoRA live in `fusionrec.trainer.models.causal_lm`; the TrainModules in
`fusionrec.trainer.recipes.{dmpo,palr}.module`. See docs/llm.md.
"""
