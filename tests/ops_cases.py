"""Shared inputs for the RoI+RoD align tests: random maps and boxes that hit every edge case.

Box kinds: ordinary crops, crops straddling or outside the map, the exact map border,
degenerate boxes (x2 < x1, zero size), edges placed exactly on RoD grid points (the mask is a
closed interval) and boxes reaching the last map row/column (the reference extrapolates there).
The spatial scale is a power of two so those placements are exact in floating point.
"""
from __future__ import annotations

import torch
from torch import Tensor

SCALE = 0.25


def rod_grid_point(size: int, k: int, output_size: int) -> float:
    """Input-pixel coordinate of the k-th RoD grid sample (map units / SCALE)."""
    return k * (size - 1.001) / output_size / SCALE


def make_boxes(batch: int, height: int, width: int, output_size: int, count: int, generator: torch.Generator,
               images: tuple[int, ...] | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """(count + 8, 5) boxes in input pixels for a (height, width) map at SCALE."""
    img_h, img_w = height / SCALE, width / SCALE

    def uniform(low: float, high: float, n: int) -> Tensor:
        return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)

    x1 = uniform(-0.4 * img_w, 1.1 * img_w, count)
    y1 = uniform(-0.4 * img_h, 1.1 * img_h, count)
    x2 = x1 + uniform(-0.1 * img_w, 0.9 * img_w, count)  # some negative widths: degenerate
    y2 = y1 + uniform(-0.1 * img_h, 0.9 * img_h, count)
    fixed = torch.tensor([
        [0, 0, img_w, img_h],  # whole image, edges on the border
        [0, 0, img_w - 1, img_h - 1],
        [img_w * 0.3, img_h * 0.2, img_w * 0.3, img_h * 0.2],  # zero size
        [img_w * 0.6, img_h * 0.7, img_w * 0.2, img_h * 0.1],  # x2 < x1, y2 < y1
        [rod_grid_point(width, 2, output_size), rod_grid_point(height, 1, output_size),
         rod_grid_point(width, 6, output_size), rod_grid_point(height, output_size, output_size)],
        [-img_w, -img_h, -0.5 * img_w, -0.5 * img_h],  # entirely outside
        [img_w * 0.5, img_h * 0.5, img_w * 0.98, img_h * 0.99],  # samples in the last row/column
        [img_w * 0.1, img_h * 0.1, img_w * 2.0, img_h * 2.0],  # runs past the far border
    ], dtype=torch.float64)
    coords = torch.cat([torch.stack([x1, y1, x2, y2], dim=1), fixed])
    choices = torch.tensor(images if images is not None else range(batch), dtype=torch.float64)
    index = choices[torch.randint(len(choices), (len(coords),), generator=generator)]
    order = torch.randperm(len(coords), generator=generator)  # images interleaved, not sorted
    return torch.cat([index[:, None], coords], dim=1)[order].to(dtype)


def make_case(seed: int, batch: int = 3, channels: int = 5, height: int = 7, width: int = 9, output_size: int = 4,
              count: int = 24, images: tuple[int, ...] | None = None,
              dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Random (N, C, H, W) features and boxes for them."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, channels, height, width, generator=generator, dtype=torch.float64).to(dtype)
    return features, make_boxes(batch, height, width, output_size, count, generator, images, dtype)
