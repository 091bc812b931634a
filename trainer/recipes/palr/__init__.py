"""PALR: retrieval candidates -> instruction-tuned LLM ranker: config.py (torch-free section `[palr]`),
data.py (the instruction tasks), rerank.py (retrievers, re-ranking evaluation), module.py (the TrainModule),
export.py; answer scoring, batches and the ranker export are in trainer/llm/.

Its builder is the one that lives in launch/ (launch/palr_retriever.py): the default retriever, SASRec, is
trained and saved with cluster/ code, which trainer/ must not import; the launch layer composes them.
"""

from fusionrec.trainer.recipes import Recipe

RECIPE = Recipe(
    "palr",
    build="fusionrec.launch.palr_retriever:build_palr",
    section="fusionrec.trainer.recipes.palr.config:PALRRecipeConfig",
    export="fusionrec.trainer.recipes.palr.export:export",
)
