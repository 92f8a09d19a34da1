"""qkcopy: image copy detection descriptors learned with QK Iteration (Wu & Wu, ISC2021).

The public API (see README "Python API"): load_model, embed, build_index, search, evaluate, train.
"""

from qkcopy.api import build_index, embed, evaluate, load_model, search, train

__version__ = "0.1.0"
__all__ = ["build_index", "embed", "evaluate", "load_model", "search", "train", "__version__"]
