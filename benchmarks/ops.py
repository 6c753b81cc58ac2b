"""Benchmark: fedpic's fused RoI+RoD align vs the pure-PyTorch path vs torchvision's roi_align.

Cases: one image (C=8, 16x24 map, 90 boxes; the scoring path) and a training batch of 16 such
images (1440 boxes). Methods, measured side by side in one run (interleaved rounds, median):
  fused        pic_core.ops.roi_rod_align(impl="compiled")  -> RoI and RoD, (K, 2C, 9, 9)
  reference    pic_core.ops.roi_rod_align(impl="reference") -> the same output
  torchvision  torchvision.ops.roi_align, RoI half only    -> (K, C, 9, 9), sampling_ratio=2
Passes: forward (no grad) and forward+backward; CPU with 1 and 2 threads; the GPU part runs
when a GPU is present. Writes JSON (default runs/bench/ops.json) with times in ms and ratios.

    python benchmarks/ops.py [--out runs/bench/ops.json] [--rounds 9] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torchvision
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pic_core import ops  # noqa: E402
from pic_core.geometry import grid_anchors  # noqa: E402

CHANNELS, MAP_H, MAP_W, ALIGN, SCALE = 8, 16, 24, 9, 1.0 / 16
METHODS = ("fused", "reference", "torchvision")
TARGETS = {"fused_vs_reference_fwd_bwd": 5.0, "fused_vs_torchvision_fwd_bwd": 3.0}


def make_inputs(images: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (images, 8, 16, 24) map and 90 grid-anchor boxes per image (256x384 input).

    The 90 boxes are the 256x256 grid anchors stretched to 384 wide (the 256x384 anchor set
    itself has 83), so every image has the case's 90 boxes.
    """
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(images, CHANNELS, MAP_H, MAP_W, generator=generator)
    anchors = torch.from_numpy(grid_anchors(256, 256)).float() * torch.tensor([1.5, 1.0, 1.5, 1.0])
    boxes = torch.cat([torch.cat([torch.full((len(anchors), 1), float(n)), anchors], dim=1) for n in range(images)])
    return features.to(device), boxes.to(device)


def method_call(method: str, features: torch.Tensor, boxes: torch.Tensor) -> Callable[[], torch.Tensor]:
    if method == "fused":
        return lambda: ops.roi_rod_align(features, boxes, SCALE, ALIGN, impl="compiled")
    if method == "reference":
        return lambda: ops.roi_rod_align(features, boxes, SCALE, ALIGN, impl="reference")
    return lambda: torchvision.ops.roi_align(features, boxes, ALIGN, SCALE, sampling_ratio=2, aligned=True)


def pass_call(method: str, features: torch.Tensor, boxes: torch.Tensor, backward: bool) -> Callable[[], None]:
    if not backward:
        run = method_call(method, features, boxes)

        def forward() -> None:
            with torch.no_grad():
                run()
        return forward
    leaf = features.detach().clone().requires_grad_(True)
    run = method_call(method, leaf, boxes)
    grad = torch.randn_like(run())

    def forward_backward() -> None:
        torch.autograd.backward(run(), grad)
        leaf.grad = None
    return forward_backward


def time_block(call: Callable[[], None], iters: int, device: str) -> float:
    """Mean ms per call over one block of iterations."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        call()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e3


def iterations(call: Callable[[], None], device: str, budget_ms: float) -> int:
    """Iterations that fill about budget_ms (after warm-up)."""
    for _ in range(3):
        call()
    once = max(time_block(call, 3, device), 1e-3)
    return max(3, int(budget_ms / once))


def measure(case: str, images: int, device: str, threads: int | None, rounds: int, budget_ms: float,
            progress: tqdm) -> list[dict]:
    features, boxes = make_inputs(images, device)
    fused = ops.roi_rod_align(features, boxes, SCALE, ALIGN, impl="compiled")
    reference = ops.roi_rod_align(features, boxes, SCALE, ALIGN, impl="reference")
    max_diff = float((fused - reference).abs().max())
    rows = []
    for backward in (False, True):
        calls = {m: pass_call(m, features, boxes, backward) for m in METHODS}
        iters = {m: iterations(calls[m], device, budget_ms) for m in METHODS}
        samples: dict[str, list[float]] = {m: [] for m in METHODS}
        for _ in range(rounds):  # interleaved: every method sees the same machine state
            for method in METHODS:
                samples[method].append(time_block(calls[method], iters[method], device))
            progress.update(1)
        for method in METHODS:
            rows.append({"case": case, "images": images, "boxes": len(boxes), "device": device, "threads": threads,
                         "pass": "forward+backward" if backward else "forward", "method": method,
                         "ms_median": statistics.median(samples[method]), "ms_min": min(samples[method]),
                         "iterations_per_round": iters[method], "fused_vs_reference_max_abs_diff": max_diff})
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """reference / fused and torchvision / fused per (case, device, threads, pass)."""
    out = []
    keys = {(r["case"], r["device"], r["threads"], r["pass"]) for r in rows}
    for case, device, threads, pass_ in sorted(keys, key=str):
        times = {r["method"]: r["ms_median"] for r in rows
                 if (r["case"], r["device"], r["threads"], r["pass"]) == (case, device, threads, pass_)}
        out.append({"case": case, "device": device, "threads": threads, "pass": pass_,
                    "reference_over_fused": times["reference"] / times["fused"],
                    "torchvision_over_fused": times["torchvision"] / times["fused"]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench/ops.json")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--budget-ms", type=float, default=60.0, help="time per method per round")
    parser.add_argument("--quick", action="store_true", help="3 rounds, short blocks (smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.budget_ms = 3, 10.0
    if not ops.compiled_available():
        raise SystemExit("benchmarks/ops.py: the compiled op is not built; run `make install` first")
    settings = [("cpu", t) for t in (1, 2)]
    if torch.cuda.is_available() and ops.compiled_available("cuda"):
        settings.append(("cuda", None))
    cases = [("single_image", 1), ("batch_16", 16)]
    threads_before = torch.get_num_threads()
    load_before = os.getloadavg()
    rows: list[dict] = []
    with tqdm(total=len(settings) * len(cases) * 2 * args.rounds, desc="ops benchmark", unit="round") as progress:
        for device, threads in settings:
            if threads is not None:
                torch.set_num_threads(threads)
            for case, images in cases:
                rows += measure(case, images, device, threads, args.rounds, args.budget_ms, progress)
    torch.set_num_threads(threads_before)
    summary = ratios(rows)
    fwd_bwd = [s for s in summary if s["pass"] == "forward+backward"]
    report = {
        "benchmark": "roi_rod_align",
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if any(d == "cuda" for d, _ in settings) else None,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "setup": {"channels": CHANNELS, "map": [MAP_H, MAP_W], "align": ALIGN, "spatial_scale": SCALE,
                  "boxes_per_image": 90, "torchvision": "roi_align(output 9, sampling_ratio=2, aligned=True)",
                  "rounds": args.rounds, "budget_ms": args.budget_ms},
        "results": rows,
        "ratios": summary,
        "targets": {
            "fused_fwd_bwd_vs_reference_min": TARGETS["fused_vs_reference_fwd_bwd"],
            "fused_fwd_bwd_vs_torchvision_min": TARGETS["fused_vs_torchvision_fwd_bwd"],
            "cpu_met": all(s["reference_over_fused"] >= TARGETS["fused_vs_reference_fwd_bwd"]
                           and s["torchvision_over_fused"] >= TARGETS["fused_vs_torchvision_fwd_bwd"]
                           for s in fwd_bwd if s["device"] == "cpu"),
            "gpu_faster_than_torchvision": (all(s["torchvision_over_fused"] > 1 for s in summary
                                                if s["device"] == "cuda") if len(settings) > 2 else None),
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    for s in summary:
        t = {r["method"]: r["ms_median"] for r in rows
             if (r["case"], r["device"], r["threads"], r["pass"]) == (s["case"], s["device"], s["threads"], s["pass"])}
        print(f"{s['case']:>12} {s['device']} threads={s['threads']} {s['pass']:>16}: "
              f"fused {t['fused']:.3f} ms, reference {t['reference']:.3f} ms "
              f"(x{s['reference_over_fused']:.1f}), torchvision RoI {t['torchvision']:.3f} ms "
              f"(x{s['torchvision_over_fused']:.1f})")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
