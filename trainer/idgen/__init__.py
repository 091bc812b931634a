"""IDGenRec's textual IDs: batched diverse beam search, Algorithm 1 (diverse ID generation), the ID table."""

from fusionrec.trainer.idgen.diverse_beam import BeamOutput, DiverseBeamConfig, diverse_beam_search
from fusionrec.trainer.idgen.generator import (
    IDGenConfig,
    assign_ids_sequential,
    generate_ids,
    generate_user_ids,
    normalize_id,
    user_texts,
)
from fusionrec.trainer.idgen.id_table import IDTable

__all__ = [
    "BeamOutput",
    "DiverseBeamConfig",
    "IDGenConfig",
    "IDTable",
    "assign_ids_sequential",
    "diverse_beam_search",
    "generate_ids",
    "generate_user_ids",
    "normalize_id",
    "user_texts",
]
