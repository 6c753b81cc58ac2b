"""Candidate sets: GAIC's grid anchors, or a multi-scale "free" set that can express any taste.

GAIC's grid anchors (geometry.grid_anchors) always cover the centre and at least half the
image, so a user who likes tight or off-centre crops has no candidate near their taste. The
free set instead enumerates boxes of the usual photo ratios (FREE_RATIOS plus the photo's own
ratio, "free") at sizes from the whole frame down to MIN_SIDE of it (about a quarter of the
area), each slid over a lattice of positions fine enough for its size:

- `fine` (1,200-1,900 boxes): what `fedpic crop` scores without --aspect and what
  `personalize --crops` learns over; any crop a person draws (a quarter of the photo or more,
  width/height between 1:2 and 2:1) has a candidate with IoU >= 0.8 (tests/test_candidates.py).
- `coarse` (about 170-250 boxes): the synthetic population's scored candidates and the
  training sets built from them (few boxes per image keep CSVs and training small).

Which set a model uses is its config's `model.candidates` (grid | free), stored in the model file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .geometry import grid_anchors, resized_size, to_original

CANDIDATE_SETS = ("grid", "free")
FREE_RATIOS = {"1:1": 1.0, "4:3": 4 / 3, "3:4": 3 / 4, "3:2": 3 / 2, "2:3": 2 / 3, "16:9": 16 / 9, "4:5": 4 / 5}
"""Width / height of the usual photo ratios; the photo's own ratio ("free") is added per image."""
PHOTO_RATIOS = tuple(FREE_RATIOS)
MIN_SIDE = 0.5
"""The smallest boxes have half the side of the largest box of their ratio: about 1/4 of the area."""
WHOLE_FRAME = 0.98
"""A box covering at least this share of the photo is the uncropped photo, not a crop suggestion."""


@dataclass(frozen=True)
class Density:
    """How finely a free set samples sizes and positions."""

    scales: int  # sizes per ratio, geometric from 1 down to MIN_SIDE
    position_step: float  # lattice step as a fraction of the box side
    ratios: tuple[str, ...]


DENSITIES = {
    "fine": Density(scales=5, position_step=0.15, ratios=PHOTO_RATIOS),
    "coarse": Density(scales=3, position_step=0.45, ratios=("1:1", "4:3", "3:4", "3:2", "2:3", "16:9", "4:5")),
}


def _lattice(free: float, side: float, step: float) -> np.ndarray:
    """Offsets 0..free evenly spaced, no further apart than step * side."""
    if free <= 1e-6:
        return np.zeros(1)
    count = int(math.ceil(free / (step * side))) + 1
    return np.linspace(0.0, free, count)


def ratio_boxes(height: int, width: int, aspect: float, scales: Sequence[float], step: float) -> np.ndarray:
    """Boxes of one ratio (width / height) at each scale of the largest that fits, slid over a lattice."""
    max_w = min(float(width), height * aspect)
    max_h = max_w / aspect
    out = []
    for scale in scales:
        bw, bh = max_w * scale, max_h * scale
        xs = _lattice(width - bw, bw, step)
        ys = _lattice(height - bh, bh, step)
        gx, gy = np.meshgrid(xs, ys)
        gx, gy = gx.ravel(), gy.ravel()
        out.append(np.stack([gx, gy, gx + bw, gy + bh], axis=1))
    return np.concatenate(out)


def free_candidates(height: int, width: int, density: str = "fine", whole_frame: bool = True) -> np.ndarray:
    """The free candidate set of a (height, width) photo in its pixels, (M, 4) float32, deterministic.

    `whole_frame=False` leaves out the boxes that are the uncropped photo (WHOLE_FRAME of its area
    or more): what `crop` suggests without an aspect. Synthetic users still score the whole frame,
    so a model learns how good "no crop" is, but on real photos a model trained on rendered scenes
    ranks it first on every photo (its free scores follow area, r 0.81-0.95), which says nothing.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if density not in DENSITIES:
        raise ValueError(f"unknown candidate density {density!r}; choose one of {', '.join(DENSITIES)}")
    spec = DENSITIES[density]
    scales = np.geomspace(1.0, MIN_SIDE, spec.scales)
    ratios = [FREE_RATIOS[name] for name in spec.ratios]
    own = width / height
    if all(abs(math.log(own / r)) > 0.03 for r in ratios):
        ratios.append(own)  # "free": the photo's own shape
    boxes = np.concatenate([ratio_boxes(height, width, r, scales, spec.position_step) for r in ratios])
    boxes = np.unique(np.round(boxes, 2), axis=0)
    if not whole_frame:
        boxes = boxes[(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) < WHOLE_FRAME * height * width]
    return boxes.astype(np.float32)


def fixed_ratio_candidates(height: int, width: int, aspect: float, density: str = "fine") -> np.ndarray:
    """Boxes of exactly `aspect` (width / height) at the free set's sizes and lattice, (M, 4) float32:
    what a free-set model scores for `crop --aspect` (finer positions than geometry.aspect_anchors)."""
    if aspect <= 0:
        raise ValueError("aspect must be positive")
    spec = DENSITIES[density]
    boxes = ratio_boxes(height, width, aspect, np.geomspace(1.0, MIN_SIDE, spec.scales), spec.position_step)
    return np.unique(np.round(boxes, 2), axis=0).astype(np.float32)


def candidate_set(height: int, width: int, kind: str = "grid", density: str = "fine",
                  short_side: int = 256) -> np.ndarray:
    """Candidates of a (height, width) photo in its pixels: `grid` (GAIC anchors on the network
    input of `short_side`, mapped back) or `free` (free_candidates at `density`)."""
    if kind == "grid":
        net = resized_size(height, width, short_side)
        return to_original(grid_anchors(*net), net, (height, width))
    if kind == "free":
        return free_candidates(height, width, density)
    raise ValueError(f"unknown candidate set {kind!r}; choose one of {', '.join(CANDIDATE_SETS)}")
