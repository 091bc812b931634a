"""IDGenRec's textual IDs: batched diverse beam search, Algorithm 1 (diverse ID generation), the ID table.

The package imports nothing at load time, so its torch-free modules (`config`, `quality`,
`candidate_store`) stay importable without torch; import the modules themselves, e.g.
`from fusionrec.trainer.idgen.generator import generate_ids`.
"""
