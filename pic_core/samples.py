"""Network-ready training samples from CropSets, decoded once and kept in memory.

A Sample is one image as the network sees it (resized, normalized) with its candidate
boxes mapped into network-input pixels. Decoding and resizing dominate a small model's
epoch, so a SampleCache keeps every prepared image for the life of a training run.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
from torch import Tensor

from .data.images import load_image, to_network_input
from .data.records import CropSet
from .geometry import to_resized


@dataclass
class Sample:
    name: str
    image: Optional[Tensor]  # (3, H, W) normalized network input; None when `taps` stand in for it
    boxes: Tensor  # (M, 5) [0, x1, y1, x2, y2] in network-input pixels
    scores: Tensor  # (M,) raw target scores
    original_size: tuple[int, int]
    user: int = -1  # row in a user table (prior stage), -1 when not used
    annotator_labels: Optional[Tensor] = None  # (M,) pretext labels, CPC-style data only
    taps: Optional[Tensor] = None  # (C_taps, H/16, W/16) backbone output of a frozen backbone, cached
    input_size: Optional[tuple[int, int]] = None  # (H, W) of the network input; needed with `taps`

    @property
    def network_size(self) -> tuple[int, int]:
        """(H, W) of the network input, from the image or from the recorded size."""
        if self.image is not None:
            return tuple(self.image.shape[-2:])
        if self.input_size is None:
            raise ValueError(f"sample {self.name}: neither an image nor an input size")
        return tuple(self.input_size)


def boxes_with_batch(boxes: np.ndarray, batch_index: int = 0) -> Tensor:
    """(M, 4) -> (M, 5) float32 tensor with a leading batch-index column."""
    boxes_t = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4)
    return torch.cat([torch.full((boxes_t.shape[0], 1), float(batch_index)), boxes_t], dim=1)


def annotator_labels(annotator_scores: Optional[np.ndarray]) -> Optional[Tensor]:
    """Pretext labels: for each crop, the annotator who liked it most relative to their own mean."""
    if annotator_scores is None or len(annotator_scores) < 2:
        return None
    scores = np.asarray(annotator_scores, dtype=np.float64)
    centred = (scores - scores.mean(axis=1, keepdims=True)) / (scores.std(axis=1, keepdims=True) + 1e-6)
    return torch.as_tensor(np.argmax(centred, axis=0), dtype=torch.long)


class SampleCache:
    """Prepares CropSets into Samples, decoding each image file once."""

    def __init__(self, short_side: int, max_pixels: Optional[int] = None):
        self.short_side = short_side
        self.max_pixels = max_pixels
        self._images: dict[Path, tuple[Tensor, tuple[int, int], tuple[int, int]]] = {}

    def network_image(self, path: Path) -> tuple[Tensor, tuple[int, int], tuple[int, int]]:
        """(input tensor, resized (H, W), original (H, W)) of one image file, cached."""
        path = Path(path)
        if path not in self._images:
            kwargs = {} if self.max_pixels is None else {"max_pixels": self.max_pixels}
            image = load_image(path, **kwargs)
            tensor, resized = to_network_input(image, self.short_side)
            self._images[path] = (tensor, resized, tuple(image.shape[:2]))
        return self._images[path]

    def sample(self, crop_set: CropSet, user: int = -1) -> Sample:
        tensor, resized, original = self.network_image(crop_set.image_path)
        boxes = to_resized(crop_set.boxes, original, resized)
        return Sample(crop_set.name, tensor, boxes_with_batch(boxes), torch.as_tensor(crop_set.scores),
                      original, user, annotator_labels(crop_set.annotator_scores))

    def samples(self, crop_sets: Iterable[CropSet], user: int = -1) -> list[Sample]:
        return [self.sample(c, user) for c in crop_sets]
