"""Loads fedpic's compiled RoI+RoD align op and registers its Python-side rules.

`pic_core._C` holds the operator schemas (TORCH_LIBRARY(fedpic)) and the CPU kernels;
`pic_core._C_cuda` holds the CUDA kernels and is imported only when a GPU is present, so a
CPU-only machine never touches the CUDA runtime. This module adds what torch needs to use the
op beyond eager calls: a fake (meta) kernel for torch.compile / torch.export, the autograd
formula (the backward is its own op, whose own backward is the forward again: both are linear
in their tensor argument) and an autocast rule. The C++ library names this module with
set_python_module, so torch imports it when it needs the fake kernels.
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch
from torch import Tensor

def _import(name: str) -> Optional[str]:
    """Import an extension module; None on success, else the reason it failed."""
    try:
        importlib.import_module(name)
    except ImportError as exc:  # missing build, or a shared library that cannot load
        return f"{type(exc).__name__}: {exc}"
    return None


LOAD_ERRORS: dict[str, str] = {}
"""Device type -> why its kernels are unavailable (only for device types that were tried)."""

DEVICES: frozenset[str] = frozenset()
"""Device types ('cpu', 'cuda') with compiled kernels loaded."""


def _load() -> frozenset[str]:
    error = _import("pic_core._C")
    if error is not None:
        LOAD_ERRORS["cpu"] = error
        return frozenset()
    devices = {"cpu"}
    if torch.cuda.is_available():
        error = _import("pic_core._C_cuda")
        if error is None:
            devices.add("cuda")
        else:
            LOAD_ERRORS["cuda"] = error
    return frozenset(devices)


def _register() -> None:
    """Fake kernels, autograd and autocast for torch.ops.fedpic.*; needs the schemas loaded."""
    forward = "fedpic::roi_rod_align"
    backward = "fedpic::roi_rod_align_backward"

    @torch.library.register_fake(forward)
    def _forward_fake(features: Tensor, boxes: Tensor, spatial_scale: float, output_size: int) -> Tensor:
        torch._check(features.dim() == 4, lambda: "roi_rod_align: features must be (N, C, H, W)")
        torch._check(boxes.dim() == 2 and boxes.shape[1] == 5, lambda: "roi_rod_align: boxes must be (K, 5)")
        return features.new_empty((boxes.shape[0], 2 * features.shape[1], output_size, output_size))

    @torch.library.register_fake(backward)
    def _backward_fake(grad: Tensor, boxes: Tensor, spatial_scale: float, output_size: int,
                       batch: int, channels: int, height: int, width: int) -> Tensor:
        torch._check(grad.dim() == 4, lambda: "roi_rod_align: gradient must be (K, 2C, A, A)")
        return grad.new_empty((batch, channels, height, width))

    def _forward_setup(ctx, inputs, output) -> None:
        features, boxes, spatial_scale, output_size = inputs
        ctx.save_for_backward(boxes)
        ctx.spatial_scale = spatial_scale
        ctx.output_size = output_size
        ctx.map_shape = tuple(features.shape)

    def _forward_backward(ctx, grad: Tensor):
        (boxes,) = ctx.saved_tensors
        grad_features = None
        if ctx.needs_input_grad[0]:
            grad_features = torch.ops.fedpic.roi_rod_align_backward(
                grad, boxes, ctx.spatial_scale, ctx.output_size, *ctx.map_shape)
        return grad_features, None, None, None

    torch.library.register_autograd(forward, _forward_backward, setup_context=_forward_setup)

    def _backward_setup(ctx, inputs, output) -> None:
        _, boxes, spatial_scale, output_size = inputs[:4]
        ctx.save_for_backward(boxes)
        ctx.spatial_scale = spatial_scale
        ctx.output_size = output_size

    def _backward_backward(ctx, grad_grad: Tensor):
        (boxes,) = ctx.saved_tensors
        result = None
        if ctx.needs_input_grad[0]:
            result = torch.ops.fedpic.roi_rod_align(grad_grad, boxes, ctx.spatial_scale, ctx.output_size)
        return (result,) + (None,) * 7

    torch.library.register_autograd(backward, _backward_backward, setup_context=_backward_setup)

    # Under autocast the kernels run in float32 (they take float32/float64 only).
    for device_type in ("cpu", "cuda"):
        torch.library.register_autocast(forward, device_type, torch.float32)


DEVICES = _load()
if DEVICES:
    _register()
