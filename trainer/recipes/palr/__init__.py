"""PALR: retrieval candidates -> instruction-tuned LLM ranker (TrainModule: trainer/modules/palr.py).

Its builder is the one that lives in launch/ (launch/palr_retriever.py): the default retriever, SASRec, is
trained and saved with cluster/ code, which trainer/ must not import; the launch layer composes them.
"""

from fusionrec.trainer.recipes import Recipe

RECIPE = Recipe(
    "palr",
    build="fusionrec.launch.palr_retriever:build_palr",
    section="fusionrec.trainer.modules.palr:PALRRecipeConfig",
    export="fusionrec.trainer.recipes.palr.export:export",
)
