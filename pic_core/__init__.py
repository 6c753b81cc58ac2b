"""fedpic core: geometry, the fused align op, the crop scorer, data, training and inference.

Nothing in pic_core imports flwr: the federation builds on it, never the other way round.
"""
from importlib import metadata

try:
    __version__ = metadata.version("fedpic")
except metadata.PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.1.0"
