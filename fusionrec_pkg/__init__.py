"""fusionrec: foundation generative recommenders at scale."""

from fusionrec.safe_pickle import force_weights_only

__version__ = "0.1.0"

# Before anything of ours can read a checkpoint: every torch.load of this process (DeepSpeed's included)
# and of its children is weights-only. See safe_pickle.py.
force_weights_only()
