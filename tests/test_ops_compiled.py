"""fedpic's compiled RoI+RoD align (pic_core._C) against the pure-PyTorch reference.

Parity is required to 1e-5 in float32 (forward absolute; gradients relative to their largest
magnitude, since each map cell sums many boxes' contributions), on random maps and boxes that
include boxes on and outside the border and degenerate ones (tests/ops_cases.py).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from pic_core import ops
from pic_core.ops import compiled_available, roi_rod_align
from tests.ops_cases import SCALE, make_case

pytestmark = pytest.mark.skipif(not compiled_available(), reason="pic_core._C is not built (run `make install`)")

FEDPIC = torch.ops.fedpic if compiled_available() else None


def assert_parity(features, boxes, output_size: int, **tolerance) -> None:
    """Compiled (on the features' device) and reference (always on the CPU) forward and gradient agree.

    The reference runs on the CPU because it defines the semantics: on CUDA, PyTorch divides
    a tensor by a Python number through its reciprocal, so the reference's own RoI coordinates
    can land one ulp off a crafted tie there (seen on an H200), while the kernels divide exactly.
    """
    features = features.detach().requires_grad_(True)
    on_cpu = features.detach().cpu().requires_grad_(True)
    compiled = roi_rod_align(features, boxes, SCALE, output_size, impl="compiled")
    reference = roi_rod_align(on_cpu, boxes.cpu(), SCALE, output_size, impl="reference")
    forward_tol = tolerance or {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(compiled.cpu(), reference, **forward_tol)
    grad_out = torch.randn(compiled.shape, generator=torch.Generator().manual_seed(7)).to(reference.dtype)
    (grad_compiled,) = torch.autograd.grad(compiled, features, grad_out.to(compiled.device))
    (grad_reference,) = torch.autograd.grad(reference, on_cpu, grad_out)
    largest = max(float(grad_reference.abs().max()), 1.0)
    grad_tol = tolerance or {"rtol": 1e-5, "atol": 1e-5 * largest}
    torch.testing.assert_close(grad_compiled.cpu(), grad_reference, **grad_tol)


@pytest.mark.parametrize("seed,shape,output_size", [
    (0, (3, 5, 7, 9), 4),
    (1, (2, 8, 16, 24), 9),
    (2, (1, 3, 2, 2), 3),  # smallest map: every sample is on the border
    (3, (4, 1, 11, 3), 1),
    (4, (2, 17, 6, 13), 6),  # channel count not a multiple of any vector width
])
@pytest.mark.parametrize("threads", [1, 2])
def test_parity_float32(seed: int, shape, output_size: int, threads: int) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        features, boxes = make_case(seed, *shape, output_size=output_size, count=40)
        assert_parity(features, boxes, output_size)
    finally:
        torch.set_num_threads(before)


def test_parity_with_images_without_boxes_and_many_boxes() -> None:
    features, boxes = make_case(5, batch=5, channels=8, height=16, width=24, output_size=9, count=300, images=(1, 3))
    assert_parity(features, boxes, 9)


def test_parity_float64() -> None:
    features, boxes = make_case(6, dtype=torch.float64)
    assert_parity(features, boxes, 4, rtol=1e-12, atol=1e-12)


def test_gradcheck_and_gradgradcheck_float64(one_thread) -> None:
    features, boxes = make_case(7, batch=2, channels=2, height=4, width=5, output_size=3, count=6,
                                dtype=torch.float64)
    features.requires_grad_(True)
    op = lambda x: FEDPIC.roi_rod_align(x, boxes, SCALE, 3)  # noqa: E731
    assert torch.autograd.gradcheck(op, (features,))
    assert torch.autograd.gradgradcheck(op, (features,), fast_mode=True)


def test_opcheck_forward_and_backward(one_thread) -> None:
    features, boxes = make_case(8, batch=2, channels=3, height=5, width=6, output_size=3, count=5)
    features.requires_grad_(True)
    torch.library.opcheck(FEDPIC.roi_rod_align.default, (features, boxes, SCALE, 3))
    grad = torch.randn(len(boxes), 6, 3, 3, requires_grad=True)
    torch.library.opcheck(FEDPIC.roi_rod_align_backward.default, (grad, boxes, SCALE, 3, 2, 3, 5, 6))


def test_layouts_and_box_dtypes_give_the_same_result() -> None:
    features, boxes = make_case(9, channels=6)
    expected = roi_rod_align(features, boxes, SCALE, 4, impl="compiled")
    channels_last = features.to(memory_format=torch.channels_last)
    strided_boxes = torch.stack([boxes, boxes], dim=2)[:, :, 0]  # same values, stride 2
    assert not strided_boxes.is_contiguous()
    torch.testing.assert_close(roi_rod_align(channels_last, strided_boxes, SCALE, 4, impl="compiled"), expected)
    torch.testing.assert_close(roi_rod_align(features, boxes.double(), SCALE, 4, impl="compiled"), expected)
    int_boxes = boxes.round()
    torch.testing.assert_close(roi_rod_align(features, int_boxes.long(), SCALE, 4, impl="compiled"),
                               roi_rod_align(features, int_boxes, SCALE, 4, impl="reference"), rtol=1e-5, atol=1e-5)


def test_half_features_are_computed_in_float32() -> None:
    features, boxes = make_case(10)
    out = roi_rod_align(features.to(torch.bfloat16), boxes, SCALE, 4, impl="compiled")
    assert out.dtype == torch.bfloat16
    expected = roi_rod_align(features.to(torch.bfloat16).float(), boxes, SCALE, 4, impl="reference")
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert FEDPIC.roi_rod_align(features.to(torch.bfloat16), boxes, SCALE, 4).dtype == torch.float32


@pytest.mark.parametrize("impl", ["compiled", "reference"])
def test_empty_boxes(impl: str) -> None:
    features = torch.randn(2, 3, 5, 5, requires_grad=True)
    out = roi_rod_align(features, torch.zeros(0, 5), SCALE, 9, impl=impl)
    assert out.shape == (0, 6, 9, 9)
    (grad,) = torch.autograd.grad(out.sum(), features)
    assert torch.equal(grad, torch.zeros_like(features))


BAD_INPUTS = [
    ("features", lambda f, b: (f[0], b), ValueError, r"features must be \(N, C, H, W\)"),
    ("int features", lambda f, b: (f.long(), b), TypeError, "floating point"),
    ("box shape", lambda f, b: (f, b[:, :4]), ValueError, r"boxes must be \(K, 5\)"),
    ("box device", lambda f, b: (f, b.to("meta")), ValueError, "boxes on meta but features on cpu"),
    ("tiny map", lambda f, b: (f[:, :, :1], b), ValueError, "at least 2x2"),
    ("batch index high", lambda f, b: (f, b.index_fill(1, torch.tensor([0]), 3.0)), ValueError,
     r"batch indices must be integers in \[0, 2\]"),
    ("batch index negative", lambda f, b: (f, b.index_fill(1, torch.tensor([0]), -1.0)), ValueError,
     "batch indices"),
    ("batch index fraction", lambda f, b: (f, b.index_fill(1, torch.tensor([0]), 0.5)), ValueError,
     "batch indices"),
    ("nan box", lambda f, b: (f, torch.cat([b, torch.tensor([[0, float("nan"), 0, 1, 1]])])), ValueError,
     "NaN or infinite"),
    ("inf box", lambda f, b: (f, torch.cat([b, torch.tensor([[0, 0, 0, float("inf"), 1]])])), ValueError,
     "NaN or infinite"),
]


@pytest.mark.parametrize("impl", ["compiled", "reference"])
@pytest.mark.parametrize("name,corrupt,error,message", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_inputs_raise_clear_errors(impl, name, corrupt, error, message) -> None:
    features, boxes = make_case(11)
    bad_features, bad_boxes = corrupt(features, boxes)
    with pytest.raises(error, match=message):
        roi_rod_align(bad_features, bad_boxes, SCALE, 4, impl=impl)


@pytest.mark.parametrize("kwargs,message", [
    ({"output_size": 0}, "output_size must be >= 1"),
    ({"spatial_scale": 0.0}, "spatial_scale must be a positive finite number"),
    ({"impl": "fast"}, "impl must be one of"),
])
def test_bad_arguments(kwargs, message) -> None:
    features, boxes = make_case(12)
    with pytest.raises(ValueError, match=message):
        roi_rod_align(features, boxes, **{"spatial_scale": SCALE, "output_size": 4, **kwargs})


def test_op_called_directly_checks_box_values() -> None:
    """The C++ op validates on its own, for callers that bypass pic_core.ops."""
    features, boxes = make_case(13)
    with pytest.raises(ValueError, match=r"batch indices must be integers in \[0, 2\], got range \[0, 7\]"):
        FEDPIC.roi_rod_align(features, boxes.index_fill(1, torch.tensor([0]), 7.0).index_fill(
            0, torch.tensor([0]), 0.0), SCALE, 4)
    with pytest.raises(ValueError, match="NaN or infinite"):
        FEDPIC.roi_rod_align_backward(torch.zeros(1, 10, 4, 4), torch.tensor([[0, 0, 0, float("inf"), 1.0]]),
                                      SCALE, 4, 3, 5, 7, 9)
    with pytest.raises(ValueError, match=r"gradient must be \(1, 10, 4, 4\)"):
        FEDPIC.roi_rod_align_backward(torch.zeros(1, 10, 3, 4), boxes[:1], SCALE, 4, 3, 5, 7, 9)


def test_torch_compile_and_export(one_thread) -> None:
    features, boxes = make_case(14, channels=4)
    features.requires_grad_(True)

    def loss(x, b):
        return (roi_rod_align(x, b, SCALE, 4, impl="compiled") ** 2).sum()

    (eager_grad,) = torch.autograd.grad(loss(features, boxes), features)
    compiled_loss = torch.compile(loss, backend="aot_eager", fullgraph=True, dynamic=True)
    (compiled_grad,) = torch.autograd.grad(compiled_loss(features, boxes), features)
    torch.testing.assert_close(compiled_grad, eager_grad)

    class Align(torch.nn.Module):
        def forward(self, x, b):
            return roi_rod_align(x, b, SCALE, 4)

    exported = torch.export.export(Align(), (features.detach(), boxes))
    assert any(node.target is FEDPIC.roi_rod_align.default for node in exported.graph.nodes)
    torch.testing.assert_close(exported.module()(features.detach(), boxes), Align()(features.detach(), boxes))


def test_model_scoring_runs_the_compiled_op(one_thread) -> None:
    from pic_core.config import ModelConfig
    from pic_core.model import CropScorer

    model = CropScorer(ModelConfig(backbone="mobilenet_v2", width=0.25, channels=4, hidden=16, feature_dim=8, embed_dim=4, context_dim=8))
    images = torch.randn(1, 3, 64, 64)
    boxes = torch.tensor([[0, 0, 0, 64, 48.0], [0, 20, 10, 60, 60]])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        model(images, boxes).sum().backward()
    names = {event.name for event in profile.events()}
    assert "fedpic::roi_rod_align" in names and "fedpic::roi_rod_align_backward" in names


FALLBACK_SCRIPT = textwrap.dedent("""
    import sys, warnings
    sys.modules["pic_core._C"] = None  # as if the extension were never built
    import torch
    from pic_core import ops
    assert not ops.compiled_available()
    features, boxes = torch.randn(1, 2, 4, 4), torch.tensor([[0, 0, 0, 30, 20.0]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ops.roi_rod_align(features, boxes, 0.25, 3)
        ops.roi_rod_align(features, boxes, 0.25, 3)
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert "pure-PyTorch reference" in message and "make install" in message, message
    assert torch.equal(out, ops.roi_rod_align_reference(features, boxes, 0.25, 3))
    try:
        ops.roi_rod_align(features, boxes, 0.25, 3, impl="compiled")
    except RuntimeError as error:
        assert "pip install --no-build-isolation -e ." in str(error), error
    else:
        raise AssertionError("impl='compiled' without the extension must fail")
    print("fallback ok")
""")


def test_fallback_without_extension_warns_once_and_matches_reference() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT], cwd=root, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fallback ok" in result.stdout


def test_auto_uses_compiled_without_warning() -> None:
    features, boxes = make_case(15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = roi_rod_align(features, boxes, SCALE, 4)
    torch.testing.assert_close(out, roi_rod_align(features, boxes, SCALE, 4, impl="compiled"), rtol=0, atol=0)
    assert "cpu" not in ops._warned_fallback
