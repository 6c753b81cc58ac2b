"""Inference: the best crops of a photo for one user.

The backbone runs once per photo; every candidate is scored in one batched pass through the
align op and the heads, under torch.inference_mode. A Cropper holds a scoring backend (the
eager CropScorer, or a torch.export program from `fedpic export`) and the preprocessing
that turns a decoded RGB photo into the network input, so cropping, benchmarking and
personalizing from a user's own crops all see a photo the same way.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from .checkpoint import load_model, load_user_state
from .data.images import to_network_input
from .export import compile_cached
from .exported import is_exported_file, load_program
from .geometry import ASPECT_LIMITS, aspect_anchors, grid_anchors, resized_size, to_original, to_resized
from .inference import MIN_INPUT_SIDE, Backend, ScoringModule
from .model import CropScorer
from .profiles import Profile, get_profile
from .runtime import resolve_device

log = logging.getLogger("fedpic")

LONG_SIDE_FACTOR = 4
"""The network input's long side is capped at this many short sides (panoramas shrink instead)."""


@dataclass
class CropResult:
    box: tuple[float, float, float, float]  # [x1, y1, x2, y2] in original pixels
    score: float
    rank: int  # 1 = best

    def as_dict(self) -> dict:
        return {"rank": self.rank, "box": [round(v, 2) for v in self.box], "score": round(self.score, 5)}


def input_short_side(height: int, width: int, short_side: int) -> int:
    """The short side to resize to: `short_side`, less for panoramas whose long side would pass
    LONG_SIDE_FACTOR * short_side (never below MIN_INPUT_SIDE)."""
    new_h, new_w = resized_size(height, width, short_side)
    limit = LONG_SIDE_FACTOR * short_side
    if max(new_h, new_w) <= limit:
        return short_side
    return max(MIN_INPUT_SIDE, int(short_side * limit / max(new_h, new_w)))


class Cropper:
    """Scores candidate crops of decoded RGB images for one user (or the generic model)."""

    def __init__(self, backend: Backend, short_side: int, device: Union[str, torch.device] = "cpu",
                 channels_last: bool = False, model: Optional[CropScorer] = None, description: str = ""):
        self.backend = backend
        self.short_side = short_side
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.model = model  # the eager model, when there is one (personalization, backbone timing)
        self.description = description

    @classmethod
    def from_model(cls, model: CropScorer, device: Union[str, torch.device] = "cpu", personal: bool = True,
                   profile: Union[str, Profile] = "default") -> "Cropper":
        """A Cropper over a CropScorer with the profile's runtime settings (compiling when it asks)."""
        profile = get_profile(profile) if isinstance(profile, str) else profile
        device = torch.device(device)
        model = model.to(device).eval()
        mismatched = {k: (getattr(model.config, k), v) for k, v in profile.expects.items()
                      if getattr(model.config, k) != v}
        if mismatched:
            log.warning("profile %s expects a model trained with `--config %s`; this one differs (%s): "
                        "only the runtime settings apply", profile.name, profile.name,
                        ", ".join(f"{k}={have} not {want}" for k, (have, want) in mismatched.items()))
        if profile.compile and device.type == "cpu":
            return load_exported(compile_cached(model, personal, profile.name), "cpu")
        channels_last = profile.channels_last and device.type == "cpu"
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        return cls(ScoringModule(model, personal).eval(), model.config.short_side, device, channels_last,
                   model=model, description=f"eager, profile {profile.name}")

    @classmethod
    def load(cls, model_path: Union[str, Path], user_state: Optional[Union[str, Path]] = None,
             device: str = "auto", profile: Union[str, Profile] = "default") -> "Cropper":
        """A model file from training, or an exported program from `fedpic export` (detected)."""
        torch_device = resolve_device(device)
        if is_exported_file(model_path):
            if user_state is not None:
                raise ValueError(f"{model_path}: an exported model has its user state built in; "
                                 "give --user-state to `fedpic export` instead")
            return load_exported(model_path, torch_device)
        model, _ = load_model(model_path, torch_device)
        if user_state is not None:
            load_user_state(user_state, model)
        return cls.from_model(model, torch_device, personal=user_state is not None, profile=profile)

    # -- preprocessing --
    def input_short_side(self, size: tuple[int, int]) -> int:
        return input_short_side(size[0], size[1], self.short_side)

    def prepare(self, image: np.ndarray) -> tuple[Tensor, tuple[int, int]]:
        """RGB uint8 photo -> ((1, 3, h, w) network input on the device, (h, w))."""
        tensor, resized = to_network_input(image, self.input_short_side(image.shape[:2]))
        tensor = tensor[None].to(self.device)
        if self.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor, resized

    def candidates(self, size: tuple[int, int], aspect: Optional[float] = None) -> np.ndarray:
        """Candidate boxes in original pixels for an image of size (height, width).

        Free aspect: the grid anchors of the network input. A fixed `aspect` (w/h): boxes of
        exactly that ratio generated over scales and positions (not a filter of the grid).
        A panorama beyond the grid's ratio limits gets boxes of the widest allowed ratio.
        """
        height, width = size
        if aspect is not None:
            return aspect_anchors(height, width, aspect)
        net = resized_size(height, width, self.input_short_side(size))
        boxes = grid_anchors(*net)
        if len(boxes):
            return to_original(boxes, net, size)
        low, high = ASPECT_LIMITS  # height / width limits of a grid anchor
        nearest = min(max(height / width, low * 1.01), high * 0.99)
        return aspect_anchors(height, width, 1.0 / nearest)

    # -- scoring --
    @torch.inference_mode()
    def score(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Scores of `boxes` (original pixels) on an RGB uint8 image: one backbone pass."""
        tensor, resized = self.prepare(image)
        net_boxes = torch.from_numpy(to_resized(boxes, image.shape[:2], resized)).to(self.device)
        return self.backend(tensor, net_boxes).float().cpu().numpy()

    def crop(self, image: np.ndarray, aspect: Optional[float] = None, top_k: int = 5) -> list[CropResult]:
        """The top-K crops, best first (ties keep candidate order)."""
        boxes = self.candidates(image.shape[:2], aspect)
        scores = self.score(image, boxes)
        order = np.argsort(-scores, kind="stable")[: max(1, top_k)]
        return [CropResult(tuple(float(v) for v in boxes[i]), float(scores[i]), rank + 1)
                for rank, i in enumerate(order)]


def load_exported(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> Cropper:
    """A Cropper running a file written by `fedpic export` (see exported.load_program)."""
    program = load_program(path, device)
    return Cropper(program.backend, program.short_side, program.device, description=program.description)
