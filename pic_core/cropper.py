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

from .candidates import CANDIDATE_SETS, fixed_ratio_candidates, free_candidates
from .checkpoint import CheckpointError, load_model, load_user_state
from .data.images import load_image, network_size, normalized
from .export import compile_cached
from .exported import PROGRAM_SUFFIX, is_exported_file, load_program, read_export_meta
from .geometry import (ASPECT_LIMITS, aspect_anchors, grid_anchors, parse_aspect, resized_size, to_original,
                       to_resized)
from .inference import MIN_INPUT_SIDE, Backend, ScoringModule
from .model import CropScorer
from .profiles import Profile, get_profile
from .runtime import resolve_device
from .subjects import Subjects, apply_subject_rule, find_subjects

log = logging.getLogger("fedpic")

LONG_SIDE_FACTOR = 4
"""The network input's long side is capped at this many short sides (panoramas shrink instead)."""


@dataclass
class CropResult:
    box: tuple[float, float, float, float]  # [x1, y1, x2, y2] in original pixels
    score: float  # what the ranking used: the model's score less the subject rule's penalty (-inf: cuts a head)
    rank: int  # 1 = best
    model_score: Optional[float] = None  # the model's own score, when the subject rule changed it

    def as_dict(self) -> dict:
        out = {"rank": self.rank, "box": [round(v, 2) for v in self.box],
               "score": round(self.score, 5) if np.isfinite(self.score) else None}
        if self.model_score is not None and self.model_score != self.score:
            out["model_score"] = round(self.model_score, 5)
        return out


def input_short_side(height: int, width: int, short_side: int) -> int:
    """The short side to resize to: `short_side`, less for panoramas whose long side would pass
    LONG_SIDE_FACTOR * short_side (never below MIN_INPUT_SIDE)."""
    new_h, new_w = resized_size(height, width, short_side)
    limit = LONG_SIDE_FACTOR * short_side
    if max(new_h, new_w) <= limit:
        return short_side
    return max(MIN_INPUT_SIDE, int(short_side * limit / max(new_h, new_w)))


class Cropper:
    """Scores candidate crops of decoded RGB images for one user (or the generic model).

    `candidate_set`: what is scored without an aspect, `grid` (GAIC anchors) or `free` (the
    fine free set of pic_core/candidates.py); a model's config names it. `keep_subjects`:
    apply the subject rule of pic_core/subjects.py (heads and the salient region are kept).

        >>> cropper = Cropper.load("model.pt")
        >>> best = cropper.crop("photo.jpg", aspect="4:5")[0].box  # [x1, y1, x2, y2]
    """

    def __init__(self, backend: Backend, short_side: int, device: Union[str, torch.device] = "cpu",
                 channels_last: bool = False, model: Optional[CropScorer] = None, description: str = "",
                 candidate_set: str = "grid", keep_subjects: bool = True, detect_faces: bool = True):
        if candidate_set not in CANDIDATE_SETS:
            raise ValueError(f"unknown candidate set {candidate_set!r}; choose one of {', '.join(CANDIDATE_SETS)}")
        self.backend = backend
        self.short_side = short_side
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.model = model  # the eager model, when there is one (personalization, backbone timing)
        self.description = description
        self.candidate_set = candidate_set
        self.keep_subjects = keep_subjects
        self.detect_faces = detect_faces  # the subject rule looks for faces (else saliency alone)

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
            compiled = load_exported(compile_cached(model, personal, profile.name), "cpu")
            compiled.detect_faces = profile.faces
            return compiled
        channels_last = profile.channels_last and device.type == "cpu"
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        return cls(ScoringModule(model, personal).eval(), model.config.short_side, device, channels_last,
                   model=model, description=f"eager, profile {profile.name}",
                   candidate_set=model.config.candidates, detect_faces=profile.faces)

    @classmethod
    def load(cls, model_path: Union[str, Path], user_state: Optional[Union[str, Path]] = None,
             device: str = "auto", profile: Union[str, Profile] = "default",
             allow_compiled: bool = False) -> "Cropper":
        """A model file from training, or a program from `fedpic export`.

        A program can run native code (its AOTInductor library), so it loads only from a file
        named `*.pt2` and only with `allow_compiled` (the user's explicit opt-in); the kind is
        never chosen by sniffing the content. A model file holding a program is an error.
        """
        torch_device = resolve_device(device)
        if Path(model_path).suffix.lower() == PROGRAM_SUFFIX:
            if not allow_compiled:
                raise CheckpointError(f"{model_path}: a compiled program ({PROGRAM_SUFFIX}) can run native code; "
                                      "load it only if you trust its author, with --allow-compiled")
            if user_state is not None:
                raise ValueError(f"{model_path}: an exported model has its user state built in; "
                                 "give --user-state to `fedpic export` instead")
            return load_exported(model_path, torch_device)
        if is_exported_file(model_path):  # only to explain the refusal: nothing inside is loaded
            raise CheckpointError(f"{model_path}: holds a compiled program, not a model file; programs load only "
                                  f"from a {PROGRAM_SUFFIX} file with --allow-compiled")
        model, _ = load_model(model_path, torch_device)
        if user_state is not None:
            load_user_state(user_state, model)
        return cls.from_model(model, torch_device, personal=user_state is not None, profile=profile)

    # -- preprocessing --
    def input_short_side(self, size: tuple[int, int]) -> int:
        return input_short_side(size[0], size[1], self.short_side)

    def shrink(self, image: np.ndarray) -> np.ndarray:
        """The photo at the network input's size (uint8), for `prepare` and the subject rule."""
        return network_size(image, self.input_short_side(image.shape[:2]))

    def prepare(self, image: np.ndarray, small: Optional[np.ndarray] = None) -> tuple[Tensor, tuple[int, int]]:
        """RGB uint8 photo -> ((1, 3, h, w) network input on the device, (h, w)); `small`: the photo
        already shrunk by `shrink`."""
        small = self.shrink(image) if small is None else small
        tensor = normalized(small, self.channels_last)[None].to(self.device)
        if self.channels_last:  # already laid out so on the CPU: a no-op there
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor, small.shape[:2]

    def candidates(self, size: tuple[int, int], aspect: Optional[float] = None) -> np.ndarray:
        """Candidate boxes in original pixels for an image of size (height, width).

        Free aspect: the grid anchors of the network input, or the fine free set less the
        uncropped photo when `candidate_set` is `free`. A fixed `aspect` (w/h): boxes of exactly that ratio
        generated over scales and positions (not a filter of the grid; the free set's finer
        lattice for a free-set model). A panorama beyond the
        grid's ratio limits gets boxes of the widest allowed ratio.
        """
        height, width = size
        if aspect is not None and self.candidate_set == "free":
            return fixed_ratio_candidates(height, width, aspect)
        if aspect is not None:
            return aspect_anchors(height, width, aspect)
        if self.candidate_set == "free":
            return free_candidates(height, width, "fine", whole_frame=False)
        net = resized_size(height, width, self.input_short_side(size))
        boxes = grid_anchors(*net)
        if len(boxes):
            return to_original(boxes, net, size)
        low, high = ASPECT_LIMITS  # height / width limits of a grid anchor
        nearest = min(max(height / width, low * 1.01), high * 0.99)
        return aspect_anchors(height, width, 1.0 / nearest)

    # -- scoring --
    @torch.inference_mode()
    def score(self, image: np.ndarray, boxes: np.ndarray, small: Optional[np.ndarray] = None) -> np.ndarray:
        """Scores of `boxes` (original pixels) on an RGB uint8 image: one backbone pass."""
        tensor, resized = self.prepare(image, small)
        net_boxes = torch.from_numpy(to_resized(boxes, image.shape[:2], resized)).to(self.device)
        return self.backend(tensor, net_boxes).float().cpu().numpy()

    def crop(self, image: Union[np.ndarray, str, Path], aspect: Union[float, str, None] = None,
             top_k: int = 5, keep_subjects: Optional[bool] = None) -> list[CropResult]:
        """The top-K crops of an RGB uint8 array or an image file, best first (ties keep candidate order).

        `aspect`: width / height as a number or text ("16:9", "4/5"); None or "free" for any.
        Ranking applies the subject rule when `keep_subjects` (default: the Cropper's setting);
        each result's `score` is the ranking score, `model_score` the model's own.
        """
        if isinstance(image, (str, Path)):
            image = load_image(image)
        ratio = parse_aspect(aspect)
        boxes = self.candidates(image.shape[:2], ratio)
        small = self.shrink(image)
        scores = self.score(image, boxes, small)
        keep = self.keep_subjects if keep_subjects is None else keep_subjects
        ranked = self.rank_scores(image, boxes, scores, small=small) if keep else scores
        order = np.argsort(-ranked, kind="stable")[: max(1, top_k)]
        return [CropResult(tuple(float(v) for v in boxes[i]), float(ranked[i]), rank + 1, float(scores[i]))
                for rank, i in enumerate(order)]

    def rank_scores(self, image: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                    subjects: Optional[Subjects] = None, small: Optional[np.ndarray] = None) -> np.ndarray:
        """Scores with the subject rule applied (subjects found on `image`, or on its shrunk copy
        `small`, unless given)."""
        if subjects is None:
            subjects = find_subjects(image, self.detect_faces, small)
        return apply_subject_rule(boxes, scores, subjects,
                                  image.shape[:2])


def load_exported(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> Cropper:
    """A Cropper running a file written by `fedpic export` (see exported.load_program)."""
    program = load_program(path, device)
    kind = read_export_meta(path).get("model_config", {}).get("candidates", "grid")
    return Cropper(program.backend, program.short_side, program.device, description=program.description,
                   candidate_set=kind)
