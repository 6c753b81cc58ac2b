"""RoI + RoD align: the crop's inside and the image with the crop removed, on one feature map.

`roi_rod_align` is the one entry point. It runs fedpic's compiled op
(torch.ops.fedpic.roi_rod_align, built from csrc/ into pic_core._C / pic_core._C_cuda) when it
is available for the input's device, else the pure-PyTorch implementation below, which has
exactly the same semantics and is the test oracle for the compiled kernels.

Reference semantics, for A = output_size and P = A + 1 sample points per axis:
  RoI: t_k = x1*s + k * max(x2*s - x1*s + 1, 0) / A, k = 0..A (same for y).
  RoD: a fixed grid over the whole map, t_k = k * (size - 1.001) / A; a sample whose
       x lies in [x1*s, x2*s] and whose y lies in [y1*s, y2*s] is set to zero.
  Bilinear sampling from start = min(floor(t), size - 2) with weight t - start (which can
  exceed 1 at the last row: the reference extrapolates there), zero when t < 0 or t >= size.
  Then a 2x2 average pool with stride 1 gives A x A.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _op_registration

IMPLS = ("auto", "compiled", "reference")
COMPILED_DTYPES = (torch.float32, torch.float64)
BUILD_HINT = ("build it with `make install` or `pip install --no-build-isolation -e .` "
              "(see docs/kernels.md)")
_warned_fallback: set[str] = set()


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
    """Fixed RoD sample coordinates over a whole axis of `size`, (points,).

    Made on the CPU whatever the device: CUDA's division by a Python number goes through its
    reciprocal, which moved a grid point one ulp off a box edge placed on it (the mask's tie).
    """
    steps = torch.arange(points, dtype=dtype)
    return (steps * (size - 1.001) / (points - 1)).to(device)


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


def check_align_inputs(features: Tensor, boxes: Tensor, output_size: int, spatial_scale: float = 1.0,
                       values: bool = True) -> None:
    """Clear errors for the mistakes the kernels cannot recover from.

    values=False skips the checks that read box values (finite, batch index range), which
    the compiled op makes itself.
    """
    if features.dim() != 4:
        raise ValueError(f"roi_rod_align: features must be (N, C, H, W), got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise TypeError(f"roi_rod_align: features must be floating point, got {features.dtype}")
    if boxes.dim() != 2 or boxes.shape[1] != 5:
        raise ValueError(f"roi_rod_align: boxes must be (K, 5) = [batch_index, x1, y1, x2, y2], got {tuple(boxes.shape)}")
    if boxes.device != features.device:
        raise ValueError(f"roi_rod_align: boxes on {boxes.device} but features on {features.device}")
    if output_size < 1:
        raise ValueError(f"roi_rod_align: output_size must be >= 1, got {output_size}")
    if not 0 < spatial_scale < math.inf:  # also rejects NaN; traceable under torch.compile
        raise ValueError(f"roi_rod_align: spatial_scale must be a positive finite number, got {spatial_scale}")
    if features.shape[2] < 2 or features.shape[3] < 2:
        raise ValueError(f"roi_rod_align: feature map must be at least 2x2, got {tuple(features.shape[2:])}")
    if not values or boxes.numel() == 0 or torch.compiler.is_compiling():
        return  # traced (torch.export of the reference path): box values are symbolic
    if boxes.is_floating_point() and not torch.isfinite(boxes).all():
        raise ValueError("roi_rod_align: boxes contain NaN or infinite values")
    batch = boxes[:, 0]
    if (batch != batch.floor()).any() or batch.min() < 0 or batch.max() >= features.shape[0]:
        raise ValueError(
            f"roi_rod_align: batch indices must be integers in [0, {features.shape[0] - 1}], "
            f"got range [{batch.min().item()}, {batch.max().item()}]")


def compiled_available(device: str | torch.device = "cpu") -> bool:
    """Whether the compiled op is loaded for this device type (what impl="auto" will use)."""
    return torch.device(device).type in _op_registration.DEVICES


def _unavailable_reason(device_type: str) -> str:
    """Why the compiled op cannot run on this device type, with the fix when there is one."""
    error = _op_registration.LOAD_ERRORS.get(device_type) or _op_registration.LOAD_ERRORS.get("cpu")
    if error is not None:
        return f"it failed to load ({error}); {BUILD_HINT}"
    if device_type == "cuda" or not _op_registration.DEVICES:
        return f"it is not built in this installation; {BUILD_HINT}"
    return f"fedpic has kernels for {sorted(_op_registration.DEVICES)} only"


def _warn_fallback(device_type: str) -> None:
    if device_type in _warned_fallback:
        return
    _warned_fallback.add(device_type)
    warnings.warn(
        f"pic_core.ops.roi_rod_align: fedpic's compiled op is not available for {device_type}, so the "
        f"much slower pure-PyTorch reference runs instead: {_unavailable_reason(device_type)}",
        RuntimeWarning, stacklevel=3)


def roi_rod_align(features: Tensor, boxes: Tensor, spatial_scale: float = 1.0 / 16, output_size: int = 9,
                  impl: str = "auto") -> Tensor:
    """RoI + RoD align of K boxes on a feature map -> (K, 2C, A, A).

    features (N, C, H, W) float; boxes (K, 5) = [batch_index, x1, y1, x2, y2] in input pixels.
    impl: "auto" (the compiled op when it is loaded for this device, else the reference with a
    one-time warning), "compiled" (error when unavailable) or "reference". Differentiable in
    `features`. The compiled op computes float16/bfloat16 maps in float32.
    """
    if impl not in IMPLS:
        raise ValueError(f"roi_rod_align: impl must be one of {IMPLS}, got {impl!r}")
    device_type = features.device.type
    if impl == "compiled" and not compiled_available(device_type):
        raise RuntimeError(f"roi_rod_align(impl='compiled'): fedpic's compiled op is unavailable for "
                           f"{device_type}: {_unavailable_reason(device_type)}")
    compiled = impl == "compiled" or (impl == "auto" and compiled_available(device_type))
    # The compiled op checks box values itself, in one pass and without extra tensor ops.
    check_align_inputs(features, boxes, output_size, spatial_scale, values=not compiled)
    if not compiled:
        if impl == "auto":
            _warn_fallback(device_type)
        return roi_rod_align_reference(features, boxes.to(features.dtype), spatial_scale, output_size)
    if features.dtype in COMPILED_DTYPES:
        return torch.ops.fedpic.roi_rod_align(features, boxes, spatial_scale, output_size)
    aligned = torch.ops.fedpic.roi_rod_align(features.float(), boxes, spatial_scale, output_size)
    return aligned.to(features.dtype)
