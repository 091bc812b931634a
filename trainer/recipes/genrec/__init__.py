"""GenRec: BART with user/item ID embeddings (the TrainModule is in trainer/modules/genrec.py)."""

from fusionrec.trainer.recipes import Recipe

RECIPE = Recipe(
    "genrec",
    build="fusionrec.trainer.recipes.genrec.build:build",
    section="fusionrec.trainer.modules.genrec:GenRecConfig",
    export="fusionrec.trainer.recipes.genrec.build:export",
)
