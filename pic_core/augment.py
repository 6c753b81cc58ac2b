"""GAIC's training augmentation, on a prepared Sample: photometric distortion, mirror, crop subset.

As GAIC's CropAugmentation, each with probability 1/2: brightness +-32 (of 255), contrast
x[0.5, 1.5] (before or after the colour steps, at random), saturation x[0.5, 1.5], hue +-18
degrees; then a horizontal mirror (boxes mirrored with them); then at most `max_crops`
candidates of the image per step (GAIC: 64). Differences, on purpose: saturation blends
towards the pixel's grey level and hue rotates in YIQ space (no HSV round trip on a tensor);
pixels are clamped to [0, 255] before re-normalizing.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from .data.images import IMAGENET_MEAN, IMAGENET_STD
from .samples import Sample

_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)
_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_FROM_YIQ = torch.linalg.inv(_TO_YIQ)
_GREY = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)


def photometric(pixels: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """GAIC's photometric distortion of an RGB (3, H, W) image in 0..255."""
    def coin() -> bool:
        return bool(rng.integers(2))

    def contrast(x: torch.Tensor) -> torch.Tensor:
        return x * float(rng.uniform(0.5, 1.5)) if coin() else x

    x = pixels + float(rng.uniform(-32.0, 32.0)) if coin() else pixels
    contrast_first = coin()
    if contrast_first:
        x = contrast(x)
    if coin():  # saturation
        grey = (x * _GREY.to(x)).sum(0, keepdim=True)
        x = grey + float(rng.uniform(0.5, 1.5)) * (x - grey)
    if coin():  # hue: rotate the chroma plane
        angle = math.radians(float(rng.uniform(-18.0, 18.0)))
        c, s = math.cos(angle), math.sin(angle)
        rotate = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
        matrix = (_FROM_YIQ @ rotate @ _TO_YIQ).to(x)
        x = torch.einsum("ij,jhw->ihw", matrix, x)
    if not contrast_first:
        x = contrast(x)
    return x.clamp(0.0, 255.0)


def gaic_augment(sample: Sample, rng: np.random.Generator, max_crops: int = 64) -> Sample:
    """A randomly distorted, maybe mirrored copy of `sample` with at most `max_crops` crops (0: all)."""
    if sample.image is None:  # cached backbone taps: nothing to distort
        return sample
    mean, std = _MEAN.to(sample.image), _STD.to(sample.image)
    pixels = (sample.image * std + mean) * 255.0
    image = (photometric(pixels, rng) / 255.0 - mean) / std
    boxes = sample.boxes.clone()
    if rng.integers(2):
        width = image.shape[-1]
        image = image.flip(-1)
        boxes[:, 1], boxes[:, 3] = width - sample.boxes[:, 3], width - sample.boxes[:, 1]
    scores, labels = sample.scores, sample.annotator_labels
    if max_crops and len(boxes) > max_crops:
        keep = torch.as_tensor(np.sort(rng.choice(len(boxes), max_crops, replace=False)))
        boxes, scores = boxes[keep], scores[keep]
        labels = labels[keep] if labels is not None else None
    return replace(sample, image=image.contiguous(), boxes=boxes, scores=scores, annotator_labels=labels)
