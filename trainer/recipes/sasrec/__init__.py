"""SASRec (Kang & McAuley 2018) as a Trainer recipe: `fusionrec train sasrec --config sasrec_beauty`.

config.py (torch-free section `[sasrec]`), data.py (per-user sequences, resumable exactly-once batches),
module.py (the TrainModule: CE or sampled-BCE loss over every position, validation HR/NDCG@10), artefacts.py
(a checkpoint's model for scoring; read without DeepSpeed). The architecture is trainer/models/sasrec.py;
cluster/baselines.py scores checkpoints of this recipe on Ray actors.
"""

from fusionrec.trainer.recipes import Recipe

RECIPE = Recipe(
    "sasrec",
    build="fusionrec.trainer.recipes.sasrec.build:build",
    section="fusionrec.trainer.recipes.sasrec.config:SASRecRecipeConfig",
)
