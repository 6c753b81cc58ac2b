"""fedpic core: geometry, the fused align op, the crop scorer, data, training and inference.

Nothing in pic_core imports flwr: the federation builds on it, never the other way round.
"""
from __future__ import annotations

FALLBACK_VERSION = "0.1.0"
"""pyproject's version, for a source tree that is not installed."""


def __getattr__(name: str) -> str:
    """`__version__` on first use: reading the installed metadata scans every distribution,
    which a plain `fedpic --help` should not pay for."""
    if name != "__version__":
        raise AttributeError(f"module 'pic_core' has no attribute {name!r}")
    from importlib import metadata

    try:
        version = metadata.version("fedpic")
    except metadata.PackageNotFoundError:  # running from a source tree without an install
        version = FALLBACK_VERSION
    globals()["__version__"] = version
    return version
