"""fedpic: federated personalized image cropping. The `fedpic` command lives in fedpic.cli."""
from pic_core import __version__

__all__ = ["__version__"]
