"""RoI + RoD align: the crop's inside and the image with the crop removed, on one feature map.

`roi_rod_align` is the one entry point. This module holds the pure-PyTorch implementation
with exactly the reference semantics (see DESIGN.md); the compiled op plugs in behind the
same function.

Reference semantics, for A = output_size and P = A + 1 sample points per axis:
  RoI: t_k = x1*s + k * max(x2*s - x1*s + 1, 0) / A, k = 0..A (same for y).
  RoD: a fixed grid over the whole map, t_k = k * (size - 1.001) / A; a sample whose
       x lies in [x1*s, x2*s] and whose y lies in [y1*s, y2*s] is set to zero.
  Bilinear sampling from start = min(floor(t), size - 2) with weight t - start (which can
  exceed 1 at the last row: the reference extrapolates there), zero when t < 0 or t >= size.
  Then a 2x2 average pool with stride 1 gives A x A.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _bilinear_weights(coords: Tensor, size: int) -> Tensor:
    """Sampling matrix (..., P, size) such that samples = weights @ signal along that axis."""
    start = torch.floor(coords).clamp(max=size - 2)
    ratio = coords - start
    valid = ((coords >= 0) & (coords < size)).to(coords.dtype)
    index = start.clamp(min=0).long()
    weights = coords.new_zeros(*coords.shape, size)
    weights.scatter_add_(-1, index.unsqueeze(-1), ((1 - ratio) * valid).unsqueeze(-1))
    weights.scatter_add_(-1, (index + 1).unsqueeze(-1), (ratio * valid).unsqueeze(-1))
    return weights


def _roi_coords(start: Tensor, end: Tensor, points: int) -> Tensor:
    """(K,) box edges in map units -> (K, points) reference RoI sample coordinates."""
    extent = (end - start + 1).clamp(min=0)
    steps = torch.arange(points, dtype=start.dtype, device=start.device)
    return start[:, None] + steps[None, :] * extent[:, None] / (points - 1)


def _rod_coords(size: int, points: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Fixed RoD sample coordinates over a whole axis of `size`, (points,)."""
    steps = torch.arange(points, dtype=dtype, device=device)
    return steps * (size - 1.001) / (points - 1)


def roi_rod_align_reference(features: Tensor, boxes: Tensor, spatial_scale: float, output_size: int) -> Tensor:
    """Pure-PyTorch RoI+RoD align: separable bilinear sampling, no loop over boxes.

    features (N, C, H, W); boxes (K, 5) = [batch_index, x1, y1, x2, y2] in input pixels.
    Returns (K, 2C, A, A): the C RoI channels, then the C RoD channels. Differentiable in
    `features` (boxes are treated as constants, as in the reference).
    """
    _, _, height, width = features.shape
    points = output_size + 1
    dtype, device = features.dtype, features.device
    with torch.no_grad():
        rois = boxes.detach().to(dtype)
        batch = rois[:, 0].long()
        x1, y1, x2, y2 = (rois[:, i] * spatial_scale for i in range(1, 5))
        roi_wy = _bilinear_weights(_roi_coords(y1, y2, points), height)  # (K, P, H)
        roi_wx = _bilinear_weights(_roi_coords(x1, x2, points), width)  # (K, P, W)
        grid_y = _rod_coords(height, points, dtype, device)
        grid_x = _rod_coords(width, points, dtype, device)
        rod_wy = _bilinear_weights(grid_y, height)  # (P, H)
        rod_wx = _bilinear_weights(grid_x, width)  # (P, W)
        inside_y = (grid_y[None, :] >= y1[:, None]) & (grid_y[None, :] <= y2[:, None])
        inside_x = (grid_x[None, :] >= x1[:, None]) & (grid_x[None, :] <= x2[:, None])
        keep = (~(inside_y[:, :, None] & inside_x[:, None, :])).to(dtype)  # (K, P, P)

    per_box = features[batch]  # (K, C, H, W)
    roi = torch.einsum("kiy,kcyx,kjx->kcij", roi_wy, per_box, roi_wx)
    whole = torch.einsum("iy,ncyx,jx->ncij", rod_wy, features, rod_wx)  # (N, C, P, P)
    rod = whole[batch] * keep[:, None]
    sampled = torch.cat([roi, rod], dim=1)
    return F.avg_pool2d(sampled, kernel_size=2, stride=1)


def check_align_inputs(features: Tensor, boxes: Tensor, output_size: int) -> None:
    """Clear errors for the mistakes the kernels cannot recover from."""
    if features.dim() != 4:
        raise ValueError(f"roi_rod_align: features must be (N, C, H, W), got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise TypeError(f"roi_rod_align: features must be floating point, got {features.dtype}")
    if boxes.dim() != 2 or boxes.shape[1] != 5:
        raise ValueError(f"roi_rod_align: boxes must be (K, 5) = [batch_index, x1, y1, x2, y2], got {tuple(boxes.shape)}")
    if boxes.device != features.device:
        raise ValueError(f"roi_rod_align: boxes on {boxes.device} but features on {features.device}")
    if torch.compiler.is_compiling():  # traced (torch.export / torch.compile): values are symbolic, no checks
        return
    if output_size < 1:
        raise ValueError(f"roi_rod_align: output_size must be >= 1, got {output_size}")
    if features.shape[2] < 2 or features.shape[3] < 2:
        raise ValueError(f"roi_rod_align: feature map must be at least 2x2, got {tuple(features.shape[2:])}")
    if boxes.numel() == 0:
        return
    if not torch.isfinite(boxes).all():
        raise ValueError("roi_rod_align: boxes contain NaN or infinite values")
    batch = boxes[:, 0]
    if (batch != batch.round()).any() or batch.min() < 0 or batch.max() >= features.shape[0]:
        raise ValueError(
            f"roi_rod_align: batch indices must be integers in [0, {features.shape[0] - 1}], "
            f"got range [{batch.min().item()}, {batch.max().item()}]")


def roi_rod_align(features: Tensor, boxes: Tensor, spatial_scale: float = 1.0 / 16, output_size: int = 9,
                  impl: str = "auto") -> Tensor:
    """RoI + RoD align of K boxes on a feature map -> (K, 2C, A, A).

    impl: "auto" (the compiled op when available), "compiled" or "reference".
    """
    check_align_inputs(features, boxes, output_size)
    if boxes.shape[0] == 0:
        n, c = features.shape[:2]
        return features.new_zeros(0, 2 * c, output_size, output_size)
    if impl not in ("auto", "reference", "compiled"):
        raise ValueError(f"roi_rod_align: impl must be 'auto', 'compiled' or 'reference', got {impl!r}")
    if impl == "compiled":
        raise RuntimeError("roi_rod_align: the compiled op is not built in this installation")
    return roi_rod_align_reference(features, boxes.to(features.dtype), spatial_scale, output_size)
