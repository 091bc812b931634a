"""One TrainModule per recipe (idgenrec, genrec, sasrec, palr, dmpo) plus `toy` for engine tests/bench.

The protocol lives in `base.py` (TrainModule, BaseTrainModule, Phase, BatchStats); import recipe modules
directly (`fusionrec.trainer.modules.idgenrec`) so that importing this package stays cheap.
"""
