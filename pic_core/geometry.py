"""Boxes, the network input size, grid-anchor candidates and coordinate maps.

Boxes are float arrays of [x1, y1, x2, y2] in pixels everywhere in files and APIs;
the network sees a resized image, so every box crosses the two maps below.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

GRID_BINS = 12
"""The image is cut into 12x12 bins; anchor corners sit on bin centres."""
START_BINS = 4
"""x1 and y1 may sit in the first four bins, x2 and y2 in the last four."""
MIN_AREA_FRACTION = 0.4999
"""A candidate must cover at least (about) half the bins."""
ASPECT_LIMITS = (0.5, 2.0)
"""Height / width of a candidate must lie strictly inside this range."""


def resized_size(height: int, width: int, short_side: int = 256, multiple: int = 32) -> tuple[int, int]:
    """The network input size: short side to `short_side`, then each side to a multiple of 32.

    Rounding each side on its own (rather than keeping the exact aspect) is the reference
    rule; it keeps every side divisible by the backbone's stride 32.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    scale = short_side / min(height, width)
    new_h = max(multiple, int(round(height * scale / multiple)) * multiple)
    new_w = max(multiple, int(round(width * scale / multiple)) * multiple)
    return new_h, new_w


def grid_anchors(height: int, width: int) -> np.ndarray:
    """Reference candidate crops for an image of this (already resized) size, (M, 4) float32.

    Corner bin indices: x1, y1 in 0..3 and x2, y2 in 8..11; a bin index i maps to the
    pixel step * (0.5 + i). A box is kept when it spans more than 0.4999 of the bins and
    its pixel aspect ratio (height / width) lies strictly inside (0.5, 2).
    """
    step_x = width / GRID_BINS
    step_y = height / GRID_BINS
    boxes = []
    last = range(GRID_BINS - START_BINS, GRID_BINS)
    for x1 in range(START_BINS):
        for y1 in range(START_BINS):
            for x2 in last:
                for y2 in last:
                    if (x2 - x1) * (y2 - y1) <= MIN_AREA_FRACTION * GRID_BINS * GRID_BINS:
                        continue
                    ratio = ((y2 - y1) * step_y) / ((x2 - x1) * step_x)
                    if not ASPECT_LIMITS[0] < ratio < ASPECT_LIMITS[1]:
                        continue
                    boxes.append([step_x * (0.5 + x1), step_y * (0.5 + y1),
                                  step_x * (0.5 + x2), step_y * (0.5 + y2)])
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def scale_boxes(boxes: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Map boxes between two sizes (height, width) of the same picture."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sy = to_size[0] / from_size[0]
    sx = to_size[1] / from_size[1]
    return (boxes * np.array([sx, sy, sx, sy])).astype(np.float32)


def to_resized(boxes: np.ndarray, original: tuple[int, int], resized: tuple[int, int]) -> np.ndarray:
    """Original-pixel boxes -> network-input pixels."""
    return scale_boxes(boxes, original, resized)


def to_original(boxes: np.ndarray, resized: tuple[int, int], original: tuple[int, int]) -> np.ndarray:
    """Network-input boxes -> original-pixel boxes, clipped to the image."""
    out = scale_boxes(boxes, resized, original)
    return clip_boxes(out, original)


def clip_boxes(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Clip boxes to an image of size (height, width)."""
    out = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, size[1])
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, size[0])
    return out


def box_aspect(boxes: np.ndarray) -> np.ndarray:
    """Width / height of each box."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return (boxes[:, 2] - boxes[:, 0]) / np.maximum(boxes[:, 3] - boxes[:, 1], 1e-9)


def parse_aspect(text: str | float | None) -> float | None:
    """'16:9', '4/5', '1.5' or a number -> width / height; None and 'free' -> None."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        spec = str(text).strip().lower()
        if spec in ("", "free", "none", "any"):
            return None
        for sep in (":", "/", "x"):
            if sep in spec:
                left, right = spec.split(sep, 1)
                try:
                    value = float(left) / float(right)
                except (ValueError, ZeroDivisionError):
                    raise ValueError(f"aspect ratio {text!r}: expected W:H with positive numbers") from None
                break
        else:
            try:
                value = float(spec)
            except ValueError:
                raise ValueError(f"aspect ratio {text!r}: expected W:H (e.g. 16:9) or a number") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"aspect ratio {text!r} must be a positive finite number")
    return value


def filter_by_aspect(boxes: np.ndarray, aspect: float, tolerance: float = 0.1) -> np.ndarray:
    """Indices of boxes whose width/height is within a relative `tolerance` of `aspect`."""
    ratios = box_aspect(boxes)
    return np.nonzero(np.abs(np.log(ratios / aspect)) <= math.log1p(tolerance))[0]


def aspect_anchors(height: int, width: int, aspect: float, scales: Sequence[float] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5),
                   positions: int = 5) -> np.ndarray:
    """Candidates of exactly `aspect` (width / height) inside a (height, width) image, (M, 4).

    For each scale of the largest box of that ratio that fits, the box slides over a
    `positions` x `positions` lattice of offsets (duplicates removed), so a fixed output
    ratio is generated rather than filtered out of the free grid.
    """
    if aspect <= 0:
        raise ValueError("aspect must be positive")
    max_w = min(float(width), height * aspect)
    max_h = max_w / aspect
    boxes = []
    for scale in scales:
        bw, bh = max_w * scale, max_h * scale
        xs = np.linspace(0.0, width - bw, positions) if width - bw > 1e-6 else np.array([0.0])
        ys = np.linspace(0.0, height - bh, positions) if height - bh > 1e-6 else np.array([0.0])
        for y in ys:
            for x in xs:
                boxes.append([x, y, x + bw, y + bh])
    out = np.unique(np.round(np.asarray(boxes, dtype=np.float64), 3), axis=0)
    return out.astype(np.float32).reshape(-1, 4)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU between (N, 4) and (M, 4) boxes -> (N, M)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def validate_boxes(boxes: np.ndarray, size: tuple[int, int], tolerance: float = 1.0) -> list[str]:
    """Problems with boxes on an image of size (height, width): one message per bad box."""
    problems = []
    height, width = size
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            problems.append(f"box {i}: non-finite coordinate in {[x1, y1, x2, y2]}")
        elif x2 <= x1 or y2 <= y1:
            problems.append(f"box {i}: needs x2 > x1 and y2 > y1, got {[x1, y1, x2, y2]}")
        elif x1 < -tolerance or y1 < -tolerance or x2 > width + tolerance or y2 > height + tolerance:
            problems.append(f"box {i}: {[x1, y1, x2, y2]} lies outside the {width}x{height} image")
    return problems
