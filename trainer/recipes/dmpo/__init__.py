"""DMPO (multi-negative preference optimisation) of an LLM ranker, SFT stage first (TrainModule:
trainer/modules/dmpo.py; data and losses: trainer/llm/)."""

from fusionrec.trainer.recipes import Recipe

RECIPE = Recipe(
    "dmpo",
    build="fusionrec.trainer.recipes.dmpo.build:build",
    section="fusionrec.trainer.modules.dmpo:DMPORecipeConfig",
    export="fusionrec.trainer.recipes.dmpo.build:export",
)
