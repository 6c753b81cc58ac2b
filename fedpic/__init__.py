"""fedpic: federated personalized image cropping. The `fedpic` command lives in fedpic.cli."""
from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    if name == "__version__":
        import pic_core

        return pic_core.__version__
    raise AttributeError(f"module 'fedpic' has no attribute {name!r}")
