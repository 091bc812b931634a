"""IDGenRec: textual-ID generator + T5 recommender, trained alternately (the TrainModule is still in
trainer/modules/idgenrec.py; load-for-eval, export and ranking are in artefacts.py here)."""

from fusionrec.trainer.recipes import Recipe

RECIPE = Recipe(
    "idgenrec",
    build="fusionrec.trainer.recipes.idgenrec.build:build",
    section="fusionrec.trainer.modules.idgenrec:IDGenRecConfig",
    export="fusionrec.trainer.recipes.idgenrec.build:export",
)
