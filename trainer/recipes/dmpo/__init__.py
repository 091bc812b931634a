"""DMPO (multi-negative preference optimisation) of an LLM ranker, SFT stage first.

config.py (torch-free section `[dmpo]`), module.py (the TrainModule), build.py (builder, export); the data,
the objective and the scoring it shares with PALR are in trainer/llm/ (data.py, dmpo_loss.py, scoring.py)."""

from fusionrec.trainer.recipes import Recipe

RECIPE = Recipe(
    "dmpo",
    build="fusionrec.trainer.recipes.dmpo.build:build",
    section="fusionrec.trainer.recipes.dmpo.config:DMPORecipeConfig",
    export="fusionrec.trainer.recipes.dmpo.build:export",
)
