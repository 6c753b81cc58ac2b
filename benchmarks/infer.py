"""Inference speed of `fedpic crop` next to its backbone and smartcrop.py, and what `fast` costs in quality.

Side by side in one run, on the same photos (scikit-image's sample photographs plus generated
scenes of the demo population), with 2 CPU threads by default; the methods take turns photo by
photo so a busy machine slows them alike. Times run from a decoded RGB array to the boxes:

  fedpic default          Cropper, default profile (eager, channels-last), paper-size model
  default backbone        that model's MultiScaleBackbone forward alone, on the prepared input
  default backbone folded the same backbone as the Cropper runs it (BatchNorms folded into the convolutions)
  default exported        the same model as a torch.export program (`fedpic export`)
  fedpic fast             Cropper, fast profile: `--config fast` model compiled by AOTInductor
  fast eager              the fast model without compilation
  fast backbone           the fast model's backbone forward alone (eager, channels-last)
  smartcrop               smartcrop.py SmartCrop().crop for a square crop of 230 px, so it analyses
                          the photo at a 256 px short side like the default model
  smartcrop 100px         the same for the 100 px crop of smartcrop's own command line

Whether the top crop keeps the subject of real photos, next to smartcrop.py and with the time
per photo of both: benchmarks/real_photos.py (it needs a model trained on the free candidates).

Peak memory: each method runs the photos once in a fresh process (VmHWM). Quality: acc1_5
of the default and fast models on the demo population's test images with the evaluation
protocol (pic_core.protocol), both trained the same way (bench_models.py) unless given.
Writes runs/bench/infer.json.

`--backbones-only`: EfficientNet-Lite0 (the default backbone) against MobileNetV2 1.0, both at
the default model size, at short sides 256 and 128 (the demo's): time per crop set (Cropper,
every candidate of a photo scored) and per backbone forward, with the ratios side by side.
Untrained heads (timing only). Writes runs/bench/infer_backbones.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import RUNS, bench_config, demo_population, machine, trained_model, write_json  # noqa: E402

from pic_core.checkpoint import load_model  # noqa: E402
from pic_core.config import ModelConfig, load_config  # noqa: E402
from pic_core.cropper import Cropper  # noqa: E402
from pic_core.runtime import set_threads  # noqa: E402
from pic_core.data.images import load_image  # noqa: E402
from pic_core.data.sources import open_dataset  # noqa: E402
from pic_core.metrics import mean_ci  # noqa: E402
from pic_core.model import CropScorer  # noqa: E402
from pic_core.protocol import evaluate_users  # noqa: E402
from pic_core.samples import SampleCache  # noqa: E402
from pic_core.user_crops import FAST_EPOCHS, FAST_LR  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REAL = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "clock", "immunohistochemistry")
SMARTCROP_SIDE = 230
"""smartcrop prescales so that the requested crop is 0.9 of the short side: 230 -> 256 px."""
TOP_K = 5
log = logging.getLogger("fedpic.bench")


def real_photos() -> dict[str, np.ndarray]:
    from skimage import data

    photos = {}
    for name in REAL:
        image = getattr(data, name)()
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        photos[name] = np.ascontiguousarray(image[:, :, :3]).astype(np.uint8)
    return photos


def generated_photos(data: Optional[Path], count: int) -> dict[str, np.ndarray]:
    """Test images of the demo population (rendered scenes), else drawn shapes."""
    if data is not None and (data / "images").is_dir():
        files = sorted((data / "images").glob("*.jpg"))[:: max(1, len(list((data / "images").glob("*.jpg"))) // count)]
        return {f.stem: load_image(f) for f in files[:count]}
    rng = np.random.default_rng(0)
    photos = {}
    for i in range(count):
        h, w = [(360, 480), (480, 360), (300, 533), (400, 400)][i % 4]
        image = np.full((h, w, 3), rng.integers(40, 200, 3), np.uint8)
        import cv2

        for _ in range(6):
            cv2.circle(image, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(10, 80)),
                       tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
        photos[f"shapes{i}"] = image
    return photos


def model_for(path: Optional[Path], config: ModelConfig) -> tuple[CropScorer, str]:
    if path is not None:
        return load_model(path)[0], str(path)
    torch.manual_seed(0)
    return CropScorer(config).eval(), "untrained (timing only)"


def backbone_runner(model: CropScorer) -> Callable[[torch.Tensor], object]:
    """The model's backbone alone, on the input a Cropper prepared (outside the timing)."""
    def run(tensor: torch.Tensor) -> object:
        with torch.inference_mode():
            return model.backbone(tensor)
    return run


def build_methods(default: CropScorer, fast: CropScorer, export_dir: Path) -> dict[str, tuple[Callable, bool]]:
    """name -> (function of a photo, whether it takes the prepared tensor instead of the photo)."""
    from smartcrop import SmartCrop
    from PIL import Image

    from pic_core.cropper import load_exported
    from pic_core.export import export_model

    default_crop = Cropper.from_model(default, "cpu", personal=False, profile="default")
    fast_crop = Cropper.from_model(fast, "cpu", personal=False, profile="fast")
    fast_eager = Cropper.from_model(fast, "cpu", personal=False, profile="default")
    export_model(default, export_dir / "default.pt2", personal=False)
    exported = load_exported(export_dir / "default.pt2")
    smart = SmartCrop()
    return {
        "fedpic default": (lambda im: default_crop.crop(im, top_k=TOP_K), False),
        "default backbone": (backbone_runner(default), "default"),
        # the backbone as the Cropper runs it (BatchNorms folded: pic_core/inference.py)
        "default backbone folded": (backbone_runner(default_crop.backend.model), "default"),
        "default exported": (lambda im: exported.crop(im, top_k=TOP_K), False),
        "fedpic fast": (lambda im: fast_crop.crop(im, top_k=TOP_K), False),
        "fast eager": (lambda im: fast_eager.crop(im, top_k=TOP_K), False),
        "fast backbone": (backbone_runner(fast), "fast"),
        "smartcrop": (lambda im: smart.crop(Image.fromarray(im), SMARTCROP_SIDE, SMARTCROP_SIDE), False),
        "smartcrop 100px": (lambda im: smart.crop(Image.fromarray(im), 100, 100), False),
    }, {"default": default_crop, "fast": fast_eager, "fast_compiled": fast_crop, "exported": exported}


def time_methods(methods: dict, croppers: dict, photos: dict[str, np.ndarray], repeats: int) -> dict:
    """Median (and min) ms per photo for each method, methods interleaved photo by photo."""
    kinds = {kind for _, kind in methods.values() if kind}
    prepared = {kind: {n: croppers[kind].prepare(im)[0] for n, im in photos.items()} for kind in kinds}
    times: dict[str, list[float]] = {name: [] for name in methods}
    for round_ in tqdm(range(repeats + 1), desc="timing rounds"):  # round 0 warms up (allocators, lazy inits)
        for name_photo, image in photos.items():
            for name, (fn, tensor_kind) in methods.items():
                arg = prepared[tensor_kind][name_photo] if tensor_kind else image
                start = time.perf_counter()
                fn(arg)
                if round_:
                    times[name].append((time.perf_counter() - start) * 1000)
    return {name: {"median_ms": round(float(np.median(v)), 3), "min_ms": round(float(np.min(v)), 3),
                   "p90_ms": round(float(np.percentile(v, 90)), 3), "samples": len(v)} for name, v in times.items()}


def same_boxes(a: Cropper, b: Cropper, photos: dict[str, np.ndarray]) -> dict:
    """How often two croppers return the same top-K boxes (and the largest score gap)."""
    same, gap = 0, 0.0
    for image in photos.values():
        x, y = a.crop(image, top_k=TOP_K), b.crop(image, top_k=TOP_K)
        same += [c.box for c in x] == [c.box for c in y]
        gap = max(gap, max(abs(p.score - q.score) for p, q in zip(x, y)))
    return {"photos": len(photos), "same_top_k": same, "max_score_gap": gap}


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM (ru_maxrss would report the parent's peak,
    which Linux carries into a child across fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_probe(method: str, default_path: str, fast_path: str, data: Optional[str], threads: int) -> dict:
    """Run one method over the photos once in this (fresh) process; peak RSS before/after."""
    set_threads(threads)
    before = peak_rss_mb()
    photos = real_photos() | generated_photos(Path(data) if data else None, 8)
    loaded = peak_rss_mb()
    if method.startswith("smartcrop"):
        from PIL import Image
        from smartcrop import SmartCrop

        smart = SmartCrop()
        side = 100 if method.endswith("100px") else SMARTCROP_SIDE
        for image in photos.values():
            smart.crop(Image.fromarray(image), side, side)
    else:
        is_default = method.startswith("fedpic default")
        path = default_path if is_default else fast_path
        model, _ = model_for(None if path == "-" else Path(path),
                             ModelConfig() if is_default else load_config("fast").model)
        cropper = Cropper.from_model(model.eval(), "cpu", personal=False,
                                     profile="fast" if method == "fedpic fast" else "default")
        for image in photos.values():
            cropper.crop(image, top_k=TOP_K)
    peak = peak_rss_mb()
    return {"peak_rss_mb": round(peak, 1), "after_imports_and_photos_mb": round(loaded, 1),
            "after_imports_mb": round(before, 1)}


def peak_memory(methods: list[str], default_path: Optional[Path], fast_path: Optional[Path], data: Optional[Path],
                threads: int) -> dict:
    out = {}
    for method in methods:
        cmd = [sys.executable, __file__, "--memory-probe", method, "--default-model", str(default_path or "-"),
               "--fast-model", str(fast_path or "-"), "--threads", str(threads)] + (["--data", str(data)] if data else [])
        result = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        out[method] = json.loads(lines[-1]) if result.returncode == 0 and lines else {"error": result.stderr[-500:]}
    return out


def quality(default_path: Path, fast_path: Path, data: Path, threads: int, max_users: int = 0) -> dict:
    """acc1_5 (generic and personalized from 5 shots) of both models on the population's test split."""
    set_threads(threads)
    config = bench_config(None, 0, threads, {"finetune.lr": FAST_LR, "finetune.epochs": FAST_EPOCHS, "finetune.shots": 5})
    users = list(open_dataset(data).users())[: max_users or None]
    results, per_user = {}, {}
    for name, path in (("default", default_path), ("fast", fast_path)):
        model, _ = load_model(path)
        cache = SampleCache(model.config.short_side)
        for method, personalize in (("generic", False), ("personalized", True)):
            result = evaluate_users(model, users, config, 5, method=method, cache=cache, personalize=personalize)
            summary = result.summary(("acc1_5", "acc_5", "srcc"))
            results[f"{name} {method}"] = summary
            per_user[f"{name} {method}"] = {u: m["acc1_5"] for u, m in result.per_user.items()}
    diffs = {}
    for method in ("generic", "personalized"):
        a, b = per_user[f"fast {method}"], per_user[f"default {method}"]
        values = [a[u] - b[u] for u in a if u in b]
        mean, half = mean_ci(values)
        diffs[method] = {"fast_minus_default_acc1_5": round(float(mean), 4), "ci95": round(float(half), 4),
                         "users": len(values)}
    return {"models": {"default": str(default_path), "fast": str(fast_path)}, "data": str(data),
            "users": len(users), "summary": results, "paired_difference": diffs}


BACKBONES = {"lite0": "efficientnet_lite0", "mobilenet_v2": "mobilenet_v2"}


def backbones_only(photos: dict[str, np.ndarray], repeats: int, short_sides: tuple[int, ...]) -> dict:
    """Lite0 vs MobileNetV2 1.0 at each short side: crop set and backbone times, and their ratios."""
    methods, croppers = {}, {}
    for side in short_sides:
        for name, kind in BACKBONES.items():
            torch.manual_seed(0)
            config = dataclasses.replace(ModelConfig(), backbone=kind, width=1.0, short_side=side)
            model = CropScorer(config).eval()
            key = f"{name} {side}"
            croppers[key] = cropper = Cropper.from_model(model, "cpu", personal=False, profile="default")
            methods[f"{key} crop set"] = (lambda im, c=cropper: c.crop(im, top_k=TOP_K), False)
            methods[f"{key} backbone"] = (backbone_runner(cropper.backend.model), key)  # as the Cropper runs it
    timings = time_methods(methods, croppers, photos, repeats)
    table = {}
    for side in short_sides:
        row = {}
        for name in BACKBONES:
            crop = timings[f"{name} {side} crop set"]["median_ms"]
            backbone = timings[f"{name} {side} backbone"]["median_ms"]
            row[name] = {"crop_set_ms": crop, "backbone_ms": backbone, "crop_set_over_backbone": round(crop / backbone, 3)}
        row["lite0_over_mobilenet_v2_crop_set"] = round(row["lite0"]["crop_set_ms"] / row["mobilenet_v2"]["crop_set_ms"], 3)
        row["lite0_over_mobilenet_v2_backbone"] = round(row["lite0"]["backbone_ms"] / row["mobilenet_v2"]["backbone_ms"], 3)
        table[str(side)] = row
    return {"timings": timings, "by_short_side": table}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="demo population folder (default: generate it under runs/bench)")
    parser.add_argument("--default-model", type=Path, help="trained default model (default: train one)")
    parser.add_argument("--fast-model", type=Path, help="trained `--config fast` model (default: train one)")
    parser.add_argument("--epochs", type=int, default=3, help="prior epochs when training the models here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds over the photos")
    parser.add_argument("--generated", type=int, default=8, help="generated photos besides the real ones")
    parser.add_argument("--skip-quality", action="store_true", help="timing only (untrained weights when no models)")
    parser.add_argument("--quality-users", type=int, default=0, help="quality on the first N users only (0: all)")
    parser.add_argument("--quality-threads", type=int, default=1,
                        help="threads for the (untimed) quality part; 1 avoids oversubscribing a busy machine")
    parser.add_argument("--out", type=Path, default=RUNS / "infer.json")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    parser.add_argument("--memory-only", action="store_true", help="re-measure peak memory into an existing --out")
    parser.add_argument("--backbones-only", action="store_true",
                        help="EfficientNet-Lite0 vs MobileNetV2 only, on the real photos (runs/bench/infer_backbones.json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("FEDPIC_CACHE", str(RUNS / "cache"))
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, str(args.default_model), str(args.fast_model),
                                      str(args.data) if args.data else None, args.threads)))
        return 0
    if args.memory_only:
        report = json.loads(args.out.read_text())
        report["peak_memory"] = peak_memory(["fedpic default", "fedpic fast", "smartcrop"], args.default_model,
                                            args.fast_model, args.data, args.threads)
        write_json(args.out, report)
        print(json.dumps(report["peak_memory"]))
        return 0
    set_threads(args.threads)
    start = time.perf_counter()
    if args.backbones_only:
        load_before = machine()["load_average_1_5_15"]
        report = {"machine": machine() | {"load_average_at_start": load_before}, "threads": args.threads,
                  "photos": {n: list(im.shape[:2]) for n, im in real_photos().items()}}
        report |= backbones_only(real_photos(), args.repeats, (256, 128))
        report["seconds"] = round(time.perf_counter() - start, 1)
        out = args.out if args.out != RUNS / "infer.json" else RUNS / "infer_backbones.json"
        write_json(out, report)
        for side, row in report["by_short_side"].items():
            print(f"short side {side}: " + "  ".join(
                f"{n} crop set {row[n]['crop_set_ms']:.1f} ms / backbone {row[n]['backbone_ms']:.1f} ms "
                f"({row[n]['crop_set_over_backbone']:.2f}x)" for n in BACKBONES)
                  + f"  Lite0/MobileNetV2 crop set {row['lite0_over_mobilenet_v2_crop_set']:.2f}x")
        return 0
    data = None if args.skip_quality and args.data is None else demo_population(args.data)
    default_path, fast_path = args.default_model, args.fast_model
    if not args.skip_quality:
        default_path = default_path or trained_model("default", bench_config(None, args.epochs, args.threads), data)
        fast_path = fast_path or trained_model("fast", bench_config("fast", args.epochs, args.threads), data)
    set_threads(args.threads)
    default, default_source = model_for(default_path, ModelConfig())
    fast, fast_source = model_for(fast_path, load_config("fast").model)
    photos = real_photos() | generated_photos(data, args.generated)
    compile_start = time.perf_counter()
    methods, croppers = build_methods(default, fast, RUNS / "exported")
    setup_seconds = time.perf_counter() - compile_start
    load_before = machine()["load_average_1_5_15"]
    timings = time_methods(methods, croppers, photos, args.repeats)
    report = {
        "machine": machine() | {"load_average_at_start": load_before},
        "threads": args.threads,
        "photos": {name: list(image.shape[:2]) for name, image in photos.items()},
        "models": {"default": {"source": default_source, "config": vars(default.config)},
                   "fast": {"source": fast_source, "config": vars(fast.config)}},
        "setup_seconds_incl_fast_compile_and_export": round(setup_seconds, 1),
        "timings": timings,
        "agreement": {"fast_compiled_vs_eager": same_boxes(croppers["fast_compiled"], croppers["fast"], photos),
                      "default_exported_vs_eager": same_boxes(croppers["exported"], croppers["default"], photos)},
        "peak_memory": peak_memory(["fedpic default", "fedpic fast", "smartcrop"], default_path, fast_path, data,
                                   args.threads),
    }
    ratio = timings["fedpic default"]["median_ms"] / timings["default backbone"]["median_ms"]
    targets = {"default_end_to_end_over_backbone": round(ratio, 3), "default_within_1.3x_backbone": ratio <= 1.3,
               "default_end_to_end_over_folded_backbone": round(
                   timings["fedpic default"]["median_ms"] / timings["default backbone folded"]["median_ms"], 3),
               "fast_over_smartcrop": round(timings["fedpic fast"]["median_ms"] / timings["smartcrop"]["median_ms"], 3),
               "fast_at_or_below_smartcrop": timings["fedpic fast"]["median_ms"] <= timings["smartcrop"]["median_ms"]}
    report["targets"] = targets
    write_json(args.out, report)  # the timings are kept even if the quality part is cut short
    if not args.skip_quality:
        report["quality"] = quality(default_path, fast_path, data, args.quality_threads, args.quality_users)
        loss = -report["quality"]["paired_difference"]["personalized"]["fast_minus_default_acc1_5"]
        targets["fast_acc1_5_loss_points_personalized"] = round(100 * loss, 2)
        targets["fast_loses_at_most_3_points"] = loss <= 0.03
    report["targets"] = targets
    report["seconds"] = round(time.perf_counter() - start, 1)
    write_json(args.out, report)
    for name, t in timings.items():
        print(f"{name:>18}: median {t['median_ms']:7.2f} ms  min {t['min_ms']:7.2f} ms")
    print(json.dumps(targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
