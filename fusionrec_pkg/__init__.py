"""fusionrec: foundation generative recommenders at scale."""
__version__ = "0.1.0"
