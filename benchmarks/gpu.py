"""A device with a GPU: the crop path and a user's personalization on CUDA against the CPU, side by side.

The same model (default config: EfficientNet-Lite0 with its ImageNet weights, heads untrained,
seed 0) and the same photos (scikit-image's and matplotlib's real photos at 1:1, 16:9, 4:5 and
free) run on the CPU (--threads, 2 by default) and on the GPU in one run, taking turns photo by
photo. Both use fedpic's compiled op (pic_core._C on the CPU, pic_core._C_cuda on the GPU).

  crop         Cropper.crop without the subject rule: decoded RGB array -> ranked boxes; time per
               (photo, ratio) and the agreement of the two devices: largest score difference
               relative to the score range, and the share of cases with the same top box
  personalize  `fedpic personalize --crops` (pic_core.user_crops.personalize_from_crops): the six
               photos, one crop each (the subject box grown by 15% on each side), fast path; time from the files
               to the fitted state, and both devices' top-1 IoU with the crops after fitting

Needs a CUDA device: without one it says so and exits with status 0 having written nothing, so
`make bench` goes on. Writes JSON (default runs/bench/gpu.json).

    python benchmarks/gpu.py [--repeats 5] [--threads 2] [--out runs/bench/gpu.json]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from bench_models import RUNS, machine, write_json  # noqa: E402
from pic_core.config import load_config  # noqa: E402
from pic_core.cropper import Cropper  # noqa: E402
from pic_core.geometry import parse_aspect  # noqa: E402
from pic_core.model import CropScorer  # noqa: E402
from pic_core.ops import compiled_available  # noqa: E402
from pic_core.user_crops import UserCrop, personalize_from_crops  # noqa: E402
from real_photos import RATIOS, SUBJECTS, grown_box, load_photo  # noqa: E402

DEVICES = ("cpu", "cuda")
GROWTH = 0.30  # the user's crop: the subject box grown by 15% of its size on each side


def synchronized(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def crop_part(croppers: dict, photos: dict, repeats: int) -> dict:
    """Time per (photo, ratio) on each device, and how far the two devices' rankings agree."""
    times = {d: [] for d in DEVICES}
    diffs, same_top = [], []
    cases = [(name, ratio) for name in photos for ratio in RATIOS]
    for device in DEVICES:  # warm-up: CUDA context, kernels, cuDNN's algorithm choice
        for name, ratio in cases[:4]:
            croppers[device].crop(photos[name], aspect=ratio, keep_subjects=False)
    for repeat in tqdm(range(repeats), desc="crop cpu/cuda"):
        for name, ratio in cases:
            image = photos[name]
            scores = {}
            for device in DEVICES:
                cropper = croppers[device]
                synchronized(device)
                start = time.perf_counter()
                cropper.crop(image, aspect=ratio, top_k=1, keep_subjects=False)
                synchronized(device)
                times[device].append(time.perf_counter() - start)
                if repeat == 0:
                    boxes = cropper.candidates(image.shape[:2], parse_aspect(ratio))
                    scores[device] = cropper.score(image, boxes)
            if repeat == 0:
                spread = float(np.ptp(scores["cpu"])) or 1.0
                diffs.append(float(np.abs(scores["cpu"] - scores["cuda"]).max()) / spread)
                same_top.append(int(np.argmax(scores["cpu"]) == np.argmax(scores["cuda"])))
    ms = {d: round(1000 * statistics.median(times[d]), 3) for d in DEVICES}
    return {"cases": len(cases), "repeats": repeats, "median_ms": ms,
            "cpu_over_cuda": round(ms["cpu"] / ms["cuda"], 2),
            "max_relative_score_difference": max(diffs), "same_top_box": sum(same_top) / len(same_top)}


def personalize_part(model: CropScorer, photos: dict, folder: Path, repeats: int) -> dict:
    """`personalize --crops` on each device: time and the fitted state's top-1 IoU with the crops."""
    crops = []
    for name, image in photos.items():
        path = folder / f"{name}.png"
        cv2.imwrite(str(path), np.ascontiguousarray(image[:, :, ::-1]))
        crops.append(UserCrop(path, grown_box(SUBJECTS[name], image.shape[:2], GROWTH), f"{name}:1"))
    config = load_config()
    times, ious = {d: [] for d in DEVICES}, {}
    for repeat in tqdm(range(repeats + 1), desc="personalize cpu/cuda"):
        for device in DEVICES:
            trial = copy.deepcopy(model)
            synchronized(device)
            start = time.perf_counter()
            report = personalize_from_crops(trial, crops, config, device=device)
            synchronized(device)
            if repeat > 0:  # the first round warms both devices up
                times[device].append(time.perf_counter() - start)
            ious[device] = {"generic": report.top1_iou_generic, "personal": report.top1_iou_personal}
    ms = {d: round(1000 * statistics.median(times[d]), 1) for d in DEVICES}
    return {"photos": len(crops), "repeats": repeats, "median_ms": ms, "cpu_over_cuda": round(ms["cpu"] / ms["cuda"], 2),
            "top1_iou": ious}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for the CPU side")
    parser.add_argument("--out", type=Path, default=RUNS / "gpu.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: skipped, no CUDA device is visible (nothing written)", file=sys.stderr)
        return
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    torch.manual_seed(0)
    model = CropScorer(load_config().model).eval()
    photos = {name: load_photo(name) for name in SUBJECTS}
    croppers = {d: Cropper.from_model(copy.deepcopy(model), d, personal=False, profile="default") for d in DEVICES}
    payload = {"machine": machine(), "gpu": torch.cuda.get_device_name(),
               "compiled_op": {d: compiled_available(d) for d in DEVICES},
               "crop": crop_part(croppers, photos, args.repeats)}
    with tempfile.TemporaryDirectory() as folder:
        payload["personalize"] = personalize_part(model, photos, Path(folder), max(1, args.repeats // 2))
    write_json(args.out, payload)
    print(f"crop: cpu {payload['crop']['median_ms']['cpu']} ms, cuda {payload['crop']['median_ms']['cuda']} ms "
          f"(x{payload['crop']['cpu_over_cuda']}); same top box {payload['crop']['same_top_box']:.0%}; "
          f"personalize: x{payload['personalize']['cpu_over_cuda']}")


if __name__ == "__main__":
    main()
