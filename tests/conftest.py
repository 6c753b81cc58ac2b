"""Shared fixtures: small real datasets on disk (JPEG images + CSV files), made per session."""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from pic_core.config import load_config
from pic_core.data import CropSet, write_user_csv
from pic_core.geometry import grid_anchors, resized_size, to_original

ROOT = Path(__file__).resolve().parents[1]
TARGETS = [(0.5, 0.5), (1 / 3, 1 / 3), (2 / 3, 2 / 3), (2 / 3, 1 / 3)]
"""Where each toy user wants the red disc inside the crop (relative x, y)."""


def make_toy_dataset(root: Path, users: int = 3, images_per_user: int = 12, seed: int = 0) -> Path:
    """A dataset folder whose users differ only in where they like the subject placed.

    Images: noisy grey background with one red disc; candidates: the grid anchors. Splits per
    user: half prior, a quarter train, a quarter test. generic.csv: centred placement.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "users").mkdir(exist_ok=True)
    generic = []
    for u in range(users):
        target = TARGETS[u % len(TARGETS)]
        sets = []
        for i in range(images_per_user):
            h, w = 192, 256 + 64 * (i % 2)
            image = (rng.random((h, w, 3)) * 60 + 40).astype(np.uint8)
            cx, cy = int(rng.integers(60, w - 60)), int(rng.integers(50, h - 50))
            cv2.circle(image, (cx, cy), 25, (255, 40, 40), -1)
            name = f"u{u}_{i}.jpg"
            cv2.imwrite(str(root / "images" / name), image[:, :, ::-1])
            resized = resized_size(h, w)
            boxes = to_original(grid_anchors(*resized), resized, (h, w))
            relx = (cx - boxes[:, 0]) / (boxes[:, 2] - boxes[:, 0])
            rely = (cy - boxes[:, 1]) / (boxes[:, 3] - boxes[:, 1])
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (h * w)
            score = -10 * ((relx - target[0]) ** 2 + (rely - target[1]) ** 2) - area
            split = "prior" if i < images_per_user // 2 else ("train" if i < 3 * images_per_user // 4 else "test")
            sets.append(CropSet(name, root / "images" / name, boxes, score, split))
            generic.append(CropSet(name, root / "images" / name, boxes,
                                   -10 * ((relx - 0.5) ** 2 + (rely - 0.5) ** 2) - area))
        write_user_csv(root / "users" / f"user{u}.csv", sets)
    write_user_csv(root / "generic.csv", generic)
    return root


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory) -> Path:
    """3 users x 12 images, shared read-only by every test of the session."""
    return make_toy_dataset(tmp_path_factory.mktemp("toy"))


@pytest.fixture()
def tiny_config():
    """The shipped `tiny` config: the smallest model that exercises every part."""
    return load_config("tiny")


@pytest.fixture()
def model(tiny_config):
    """A fresh `tiny` CropScorer (seed 0) in eval mode; a module may define its own `model`."""
    from pic_core.model import CropScorer
    from pic_core.runtime import set_seed

    set_seed(0)
    return CropScorer(tiny_config.model).eval()


@pytest.fixture()
def one_thread():
    """One torch thread: many tiny ops, and a simulated device's setting; 2-thread OpenMP regions
    on a busy 2-core machine stall."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory) -> Path:
    """A randomly initialized `tiny` model saved as a model file (seed 0)."""
    import torch

    from pic_core.checkpoint import save_model
    from pic_core.config import to_dict
    from pic_core.model import CropScorer

    config = load_config("tiny")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_model") / "tiny.pt"
    save_model(path, CropScorer(config.model).eval(), to_dict(config), "test")
    return path


def wait_for(predicate, timeout: float, what: str, step: float = 0.5):
    """Poll `predicate` until it returns something truthy (returned) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")
