"""DMPO (multi-negative preference optimisation) of an LLM ranker, SFT stage first.

config.py (torch-free section `[dmpo]`), data.py (DMPO-format files and prompts from our corpora, fitted to the
context), loss.py (the objective, reference log-probs, AUC), module.py (the TrainModule), build.py (builder,
export); answer scoring, batches and the ranker export it shares with PALR are in trainer/llm/."""

from fusionrec.trainer.recipes import Recipe

RECIPE = Recipe(
    "dmpo",
    build="fusionrec.trainer.recipes.dmpo.build:build",
    section="fusionrec.trainer.recipes.dmpo.config:DMPORecipeConfig",
    export="fusionrec.trainer.recipes.dmpo.build:export",
)
