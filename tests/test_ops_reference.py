"""The pure-PyTorch RoI+RoD align against a plain per-sample loop written from DESIGN.md.

The loop builds the op's matrix M (it is linear in the features) one output cell, one sample
point, one bilinear tap at a time, straight from the formulas:
  RoI: t_k = x1*s + k * max(x2*s - x1*s + 1, 0) / A, k = 0..A
  RoD: t_k = k * (size - 1.001) / A; grid samples with x in [x1*s, x2*s] and y in [y1*s, y2*s]
       are zero
  bilinear from start = min(floor(t), size - 2), weight t - start, zero when t < 0 or t >= size
  then a 2x2 average pool with stride 1.
(The max(., 0) is the reference kernel's "malformed box" rule; DESIGN.md's formula omits it.)
Forward must equal M @ features and the gradient must equal M^T @ grad_output.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pic_core.ops import roi_rod_align, roi_rod_align_reference
from tests.ops_cases import SCALE, make_case


def taps(t: float, size: int) -> list[tuple[int, float]]:
    if t < 0 or t >= size:
        return []
    start = min(math.floor(t), size - 2)
    ratio = t - start
    return [(start, 1 - ratio), (start + 1, ratio)]


def design_matrix(shape: tuple[int, int, int, int], boxes: np.ndarray, scale: float, a: int) -> np.ndarray:
    n_img, c_n, h, w = shape
    p_n = a + 1
    k_n = len(boxes)
    matrix = np.zeros((k_n, 2 * c_n, a, a, n_img, c_n, h, w))
    grid_y = [k * (h - 1.001) / a for k in range(p_n)]
    grid_x = [k * (w - 1.001) / a for k in range(p_n)]
    for k, (b, bx1, by1, bx2, by2) in enumerate(boxes):
        n = int(b)
        x1, y1, x2, y2 = bx1 * scale, by1 * scale, bx2 * scale, by2 * scale
        roi_y = [y1 + p * max(y2 - y1 + 1, 0) / a for p in range(p_n)]
        roi_x = [x1 + q * max(x2 - x1 + 1, 0) / a for q in range(p_n)]
        for c in range(c_n):
            for i in range(a):
                for j in range(a):
                    for p in (i, i + 1):
                        for q in (j, j + 1):
                            for yy, wy in taps(roi_y[p], h):
                                for xx, wx in taps(roi_x[q], w):
                                    matrix[k, c, i, j, n, c, yy, xx] += 0.25 * wy * wx
                            masked = y1 <= grid_y[p] <= y2 and x1 <= grid_x[q] <= x2
                            if masked:
                                continue
                            for yy, wy in taps(grid_y[p], h):
                                for xx, wx in taps(grid_x[q], w):
                                    matrix[k, c_n + c, i, j, n, c, yy, xx] += 0.25 * wy * wx
    return matrix.reshape(k_n * 2 * c_n * a * a, n_img * c_n * h * w)


@pytest.mark.parametrize("seed,output_size", [(0, 4), (1, 3), (2, 1)])
def test_reference_matches_design_loop(seed: int, output_size: int) -> None:
    features, boxes = make_case(seed, batch=2, channels=2, height=5, width=6, output_size=output_size, count=10,
                                dtype=torch.float64)
    matrix = torch.from_numpy(design_matrix(tuple(features.shape), boxes.numpy(), SCALE, output_size))
    features.requires_grad_(True)
    out = roi_rod_align_reference(features, boxes, SCALE, output_size)
    expected = (matrix @ features.detach().reshape(-1)).reshape(out.shape)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    (grad,) = torch.autograd.grad(out, features, grad_out)
    torch.testing.assert_close(grad.reshape(-1), matrix.T @ grad_out.reshape(-1), rtol=1e-12, atol=1e-12)


def test_reference_gradcheck() -> None:
    features, boxes = make_case(3, batch=2, channels=2, height=4, width=5, output_size=3, count=6,
                                dtype=torch.float64)
    features.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: roi_rod_align_reference(x, boxes, SCALE, 3), (features,), fast_mode=True)


def test_reference_on_a_ramp_reads_coordinates() -> None:
    """On a map whose value is its x index, every valid RoI sample returns its own x coordinate."""
    h, w, a = 4, 6, 2
    ramp = torch.arange(w, dtype=torch.float64).expand(1, 1, h, w).contiguous()
    box = torch.tensor([[0, 4.0, 0.0, 16.0, 8.0]], dtype=torch.float64)  # x in [1, 4] map units
    out = roi_rod_align(ramp, box, SCALE, a, impl="reference")
    xs = [1 + q * (4 - 1 + 1) / a for q in range(a + 1)]  # 1, 3, 5: 5 is in the last column
    expected = [(xs[j] + xs[j + 1]) / 2 for j in range(a)]
    torch.testing.assert_close(out[0, 0], torch.tensor([expected] * a, dtype=torch.float64))


def test_reference_empty_boxes() -> None:
    features = torch.randn(1, 3, 4, 4, requires_grad=True)
    out = roi_rod_align_reference(features, torch.zeros(0, 5), SCALE, 9)
    assert out.shape == (0, 6, 9, 9)
