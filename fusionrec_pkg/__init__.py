"""fusionrec: foundation generative recommenders at scale."""

import os

from fusionrec.safe_pickle import force_weights_only

__version__ = "0.1.0"

# Before anything of ours can read a checkpoint: every torch.load of this process (DeepSpeed's included)
# and of its children is weights-only. See safe_pickle.py.
force_weights_only()
# Before anything of ours imports transformers: offline hub unless the user said otherwise (a lookup that
# cannot reach the hub costs ~46 s of retries; models are built from configs or local folders).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
