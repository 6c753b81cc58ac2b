"""Inference: the best crops of a photo for one user.

The backbone runs once per photo; every candidate is scored in one batched pass through the
align op and the heads.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .checkpoint import load_model, load_user_state
from .data.images import to_network_input
from .geometry import aspect_anchors, grid_anchors, resized_size, to_original, to_resized
from .model import CropScorer
from .samples import boxes_with_batch
from .train import resolve_device


@dataclass
class CropResult:
    box: tuple[float, float, float, float]  # [x1, y1, x2, y2] in original pixels
    score: float
    rank: int  # 1 = best

    def as_dict(self) -> dict:
        return {"rank": self.rank, "box": [round(v, 2) for v in self.box], "score": round(self.score, 5)}


class Cropper:
    """Scores candidate crops of decoded RGB images with a CropScorer (and a user's d_u)."""

    def __init__(self, model: CropScorer, device: Union[str, torch.device] = "cpu", personal: bool = True):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.personal = personal

    @classmethod
    def load(cls, model_path: Union[str, Path], user_state: Optional[Union[str, Path]] = None,
             device: str = "auto") -> "Cropper":
        torch_device = resolve_device(device)
        model, _ = load_model(model_path, torch_device)
        if user_state is not None:
            load_user_state(user_state, model)
        return cls(model, torch_device, personal=user_state is not None)

    @property
    def short_side(self) -> int:
        return self.model.config.short_side

    def candidates(self, size: tuple[int, int], aspect: Optional[float] = None) -> np.ndarray:
        """Candidate boxes in original pixels: the grid anchors, or boxes of exactly `aspect` (w/h)."""
        if aspect is not None:
            return aspect_anchors(size[0], size[1], aspect)
        resized = resized_size(size[0], size[1], self.short_side)
        return to_original(grid_anchors(*resized), resized, size)

    @torch.inference_mode()
    def score(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Scores of `boxes` (original pixels) on an RGB uint8 image."""
        tensor, resized = to_network_input(image, self.short_side)
        net_boxes = boxes_with_batch(to_resized(boxes, image.shape[:2], resized)).to(self.device)
        scores = self.model(tensor[None].to(self.device), net_boxes, personal=self.personal)
        return scores.float().cpu().numpy()

    def crop(self, image: np.ndarray, aspect: Optional[float] = None, top_k: int = 5) -> list[CropResult]:
        """The top-K crops, best first."""
        boxes = self.candidates(image.shape[:2], aspect)
        scores = self.score(image, boxes)
        order = np.argsort(-scores, kind="stable")[: max(1, top_k)]
        return [CropResult(tuple(float(v) for v in boxes[i]), float(scores[i]), rank + 1)
                for rank, i in enumerate(order)]
