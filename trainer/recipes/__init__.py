"""One folder per recipe: its configuration, data, loss, TrainModule and artefacts (load-for-eval, export).

Moving in progress: ``idgenrec/artefacts.py`` (a checkpoint's models for evaluation and export, ranking) and
``sasrec/`` live here; the other recipes' training code is still in ``trainer/modules`` (see
docs/ARCHITECTURE.md).
"""
