"""Moved: IDGenRec's data is ``fusionrec.trainer.recipes.idgenrec.data``. This old path re-exports the four
names that cluster/ (generative.py, zeroshot.py) and tests/test_zeroshot.py still import from here (files
under concurrent edit); remove it once they import the new path."""

from fusionrec.trainer.recipes.idgenrec.data import encodable_fn, id_tokens, load_items, title_table

__all__ = ["encodable_fn", "id_tokens", "load_items", "title_table"]
