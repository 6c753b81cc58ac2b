"""fedpic's CUDA kernels (pic_core._C_cuda) against the pure-PyTorch reference on the GPU.

Runs whenever a GPU is present and skips otherwise. With a GPU, a missing CUDA extension is a
failure (the install step builds it when it can), unless FEDPIC_CUDA=0 says the build was
CPU-only on purpose.
"""
from __future__ import annotations

import os

import pytest
import torch

from pic_core import _op_registration
from pic_core.ops import compiled_available, roi_rod_align
from tests.ops_cases import SCALE, make_case
from tests.test_ops_compiled import assert_parity

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.fixture(autouse=True)
def _cuda_kernels_loaded() -> None:
    if compiled_available("cuda"):
        return
    if os.environ.get("FEDPIC_CUDA") == "0":
        pytest.skip("CPU-only build requested (FEDPIC_CUDA=0)")
    pytest.fail(f"a GPU is present but pic_core._C_cuda did not load: {_op_registration.LOAD_ERRORS.get('cuda')}")


def on_gpu(seed: int, **kwargs):
    features, boxes = make_case(seed, **kwargs)
    return features.cuda(), boxes.cuda()


@pytest.mark.parametrize("seed,shape,output_size", [
    (0, (3, 5, 7, 9), 4),
    (1, (2, 8, 16, 24), 9),
    (2, (1, 3, 2, 2), 3),
    (4, (2, 17, 6, 13), 6),
])
def test_cuda_parity_float32(seed: int, shape, output_size: int) -> None:
    features, boxes = on_gpu(seed, batch=shape[0], channels=shape[1], height=shape[2], width=shape[3],
                             output_size=output_size, count=60)
    assert_parity(features, boxes, output_size)


def test_cuda_matches_cpu_kernel() -> None:
    features, boxes = make_case(5, batch=4, channels=8, height=16, width=24, output_size=9, count=200)
    cpu = roi_rod_align(features, boxes, SCALE, 9, impl="compiled")
    gpu = roi_rod_align(features.cuda(), boxes.cuda(), SCALE, 9, impl="compiled")
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)


def test_cuda_gradcheck_float64() -> None:
    features, boxes = on_gpu(7, batch=2, channels=2, height=4, width=5, output_size=3, count=6, dtype=torch.float64)
    features.requires_grad_(True)
    op = lambda x: torch.ops.fedpic.roi_rod_align(x, boxes, SCALE, 3)  # noqa: E731
    assert torch.autograd.gradcheck(op, (features,))
    assert torch.autograd.gradgradcheck(op, (features,), fast_mode=True)


def test_cuda_opcheck() -> None:
    features, boxes = on_gpu(8, batch=2, channels=3, height=5, width=6, output_size=3, count=5)
    features.requires_grad_(True)
    torch.library.opcheck(torch.ops.fedpic.roi_rod_align.default, (features, boxes, SCALE, 3))
    grad = torch.randn(len(boxes), 6, 3, 3, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.fedpic.roi_rod_align_backward.default, (grad, boxes, SCALE, 3, 2, 3, 5, 6))


def test_cuda_bad_boxes_and_empty() -> None:
    features, boxes = on_gpu(9)
    with pytest.raises(ValueError, match=r"batch indices must be integers in \[0, 2\]"):
        roi_rod_align(features, boxes.index_fill(1, torch.tensor([0], device="cuda"), 5.0), SCALE, 4)
    with pytest.raises(ValueError, match="NaN or infinite"):
        roi_rod_align(features, boxes.index_fill(1, torch.tensor([2], device="cuda"), float("nan")), SCALE, 4)
    assert roi_rod_align(features, boxes[:0], SCALE, 4).shape == (0, 10, 4, 4)
