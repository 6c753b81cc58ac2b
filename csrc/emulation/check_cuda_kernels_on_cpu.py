"""Run fedpic's CUDA kernels as serial host code and compare them with the reference.

For machines without a GPU (where tests/test_ops_cuda.py skips): compiles
emulate_cuda_kernels.cpp just in time (about a minute) and checks forward, backward and the
box check over random cases. It validates indexing and arithmetic, not concurrency.

    python csrc/emulation/check_cuda_kernels_on_cpu.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.cpp_extension import load
from tqdm import trange

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
from pic_core.ops import roi_rod_align_reference  # noqa: E402
from tests.ops_cases import SCALE, make_case  # noqa: E402


def main(cases: int = 60) -> None:
    emulated = load("fedpic_emulated_cuda", [str(HERE / "emulate_cuda_kernels.cpp")],
                    extra_include_paths=[str(ROOT / "csrc")], extra_cflags=["-O1"])
    worst = 0.0
    for seed in trange(cases, desc="emulated CUDA kernels"):
        generator = torch.Generator().manual_seed(seed)
        shape = [int(torch.randint(low, high, (1,), generator=generator))
                 for low, high in [(1, 4), (1, 9), (2, 10), (2, 10), (1, 10)]]
        batch, channels, height, width, output = shape
        for dtype in (torch.float32, torch.float64):
            features, boxes = make_case(seed, batch, channels, height, width, output, count=20, dtype=dtype)
            features.requires_grad_(True)
            reference = roi_rod_align_reference(features, boxes, SCALE, output)
            grad_out = torch.randn(reference.shape, generator=generator, dtype=dtype)
            (grad_reference,) = torch.autograd.grad(reference, features, grad_out)
            forward = emulated.forward(features.detach(), boxes, SCALE, output)
            backward = emulated.backward(grad_out, boxes, SCALE, output, batch, channels, height, width)
            forward_error = float((forward - reference).abs().max())
            backward_error = float((backward - grad_reference).abs().max() / max(1.0, float(grad_reference.abs().max())))
            worst = max(worst, forward_error, backward_error)
            if forward_error > 1e-5 or backward_error > 1e-5:
                raise SystemExit(f"mismatch: seed {seed} {dtype} shape {shape}: forward {forward_error:.3g}, "
                                 f"backward {backward_error:.3g}")
    good = torch.tensor([[0, 1, 2, 3, 4.0], [1, 0, 0, 5, 5]])
    checks = {
        "valid": (emulated.check_boxes(good, 2), 0),
        "index out of range": (emulated.check_boxes(good, 1), 2),
        "nan": (emulated.check_boxes(torch.tensor([[0, float("nan"), 0, 1, 1.0]]), 1), 1),
        "inf index": (emulated.check_boxes(torch.tensor([[float("inf"), 0, 0, 1, 1.0]]), 1), 3),
        "fractional index": (emulated.check_boxes(torch.tensor([[0.5, 0, 0, 1, 1.0]], dtype=torch.float64), 1), 2),
        "negative index": (emulated.check_boxes(torch.tensor([[-1.0, 0, 0, 1, 1]]), 1), 2),
    }
    for name, (got, expected) in checks.items():
        if got != expected:
            raise SystemExit(f"box check '{name}': flags {got}, expected {expected}")
    print(f"emulated CUDA kernels match the reference over {cases} cases x 2 dtypes "
          f"(worst error {worst:.2e}); box check flags correct")


if __name__ == "__main__":
    main()
