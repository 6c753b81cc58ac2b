"""Where a run executes: seeds, torch threads and the device, set once from the config."""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator, Union

import cv2
import numpy as np
import torch

from .config import Config


def set_seed(seed: int) -> None:
    """Seed every generator a run touches."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


@contextmanager
def torch_seeded(seed: int, device: Union[str, torch.device, None] = None) -> Iterator[None]:
    """Torch's global generators (dropout, random init) seeded for one block, restored after it.

    A simulated device's round runs in whichever worker process Ray picks, after whatever other
    devices ran there: without this, its dropout masks depend on that history and a federation
    is not repeatable.
    """
    on_cuda = device is not None and torch.device(device).type == "cuda"
    with torch.random.fork_rng(devices=[torch.device(device)] if on_cuda else []):
        torch.manual_seed(seed)
        yield


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present; asking for 'cuda' without one is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def set_threads(threads: int) -> None:
    """Torch and OpenCV thread counts (OpenCV's resize is part of every photo's time); 0 keeps the defaults."""
    if threads > 0:
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)


def configure_runtime(config: Config) -> torch.device:
    """Seed, thread count and device from the config."""
    set_seed(config.seed)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    return resolve_device(config.device)
