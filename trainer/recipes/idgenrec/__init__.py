"""IDGenRec: textual-ID generator + T5 recommender, trained alternately.

config.py (section `[idgenrec]`), data.py (item texts, textual-ID tokens, prompt/label collation), loaders.py
(training/validation loaders), loss.py (teacher forcing, token and trie NLL), tables.py (the run's ID tables
and their regeneration), module.py (the TrainModule), artefacts.py (load-for-eval, export, ranking; read
without DeepSpeed), build.py (builder, export). ID generation itself is trainer/idgen/.
"""

from fusionrec.trainer.recipes import Recipe

RECIPE = Recipe(
    "idgenrec",
    build="fusionrec.trainer.recipes.idgenrec.build:build",
    section="fusionrec.trainer.recipes.idgenrec.config:IDGenRecConfig",
    export="fusionrec.trainer.recipes.idgenrec.build:export",
)
