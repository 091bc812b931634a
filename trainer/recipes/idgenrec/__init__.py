"""IDGenRec: textual-ID generator + T5 recommender, trained alternately (the TrainModule is still in
trainer/modules/idgenrec.py; its checkpoint artefacts are in artefacts.py here)."""
