"""GenRec: BART with user/item ID embeddings. config.py (torch-free section `[genrec]`), data.py (ID vocabularies,
aligned encoding, cloze/finetune collation), module.py (the TrainModule: token cross-entropy, trie beam-search
validation), build.py (builder, export). The architecture is trainer/models/genrec.py."""

from fusionrec.trainer.recipes import Recipe

RECIPE = Recipe(
    "genrec",
    build="fusionrec.trainer.recipes.genrec.build:build",
    section="fusionrec.trainer.recipes.genrec.config:GenRecConfig",
    export="fusionrec.trainer.recipes.genrec.build:export",
)
