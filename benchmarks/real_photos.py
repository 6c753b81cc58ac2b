"""Real photos: does the top crop keep the subject, how fast, and does a tight taste move free crops?

Photos: scikit-image's astronaut, camera, chelsea, coffee, rocket and matplotlib's grace_hopper
with hand-set subject boxes (tests/real_photos.py). Methods, photo by photo in turns:

  fedpic             Cropper.crop, default profile, subject rule on (pic_core/subjects.py)
  fedpic no rule     the same model's own ranking (keep_subjects=False)
  fedpic saliency    the subject rule without face detection (what `--profile fast` does)
  smartcrop          smartcrop.py 0.5.0 at each fixed ratio (it needs a target size; no "free")

Times: median ms per crop (free and 4:5, top 5), after the quality pass (warm), methods in turns.

Subject kept: the top crop holds >= 95% of the subject box, at 1:1, 16:9, 4:5 and free.
Free top crops (no aspect): the relative box per photo, how many differ, whether mirroring the
photo mirrors the choice (mirror IoU >= 0.9), and how closely the model's scores follow box area
(their areas: tight_taste.generic below).
Taste: a user draws 5 tight crops (the subject box grown by 15%) on 5 photos; `personalize
--crops` (user_crops.personalize_from_crops) fits them and the free top crops are compared
before/after (area share, IoU with the tight crop, subject kept). Writes runs/bench/real_photos.json.

    python benchmarks/real_photos.py [--model M.pt] [--threads 2] [--seed S]

Without --model it trains the demo config's prior stage on the free-candidate demo population
(1 epoch, 3 prior images per user by default, training seed --seed: a minute on a CPU) and
caches it; other seeds give other instances of the same model, to see how much a figure owes
to one instance.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))
from bench_models import RUNS, bench_config, machine, trained_model, write_json  # noqa: E402
from real_photos import RATIOS, SUBJECTS, grown_box, load_photo, subject_kept  # noqa: E402

from pic_core.checkpoint import load_model  # noqa: E402
from pic_core.config import load_config  # noqa: E402
from pic_core.cropper import Cropper  # noqa: E402
from pic_core.geometry import box_iou, parse_aspect  # noqa: E402
from pic_core.runtime import set_threads  # noqa: E402
from pic_core.user_crops import UserCrop, personalize_from_crops  # noqa: E402
from pic_core.visualize import save_rgb  # noqa: E402

TIGHT_GROWTH = 0.15


def free_population(users: int, seed: int = 0) -> Path:
    """The demo population scored over the coarse free candidates (generated once)."""
    from pic_core.data.synthetic import PopulationSpec, generate

    target = RUNS / f"population-{users}u-s{seed}-free"
    if not (target / "population.json").is_file():
        generate(PopulationSpec(users=users, seed=seed, candidates="free"), target, workers=2, progress=True,
                 force=target.exists())
    return target


def smartcrop_box(smart, image: np.ndarray, aspect: float) -> tuple[float, float, float, float]:
    from PIL import Image

    w, h = (230, round(230 / aspect)) if aspect >= 1 else (round(230 * aspect), 230)
    crop = smart.crop(Image.fromarray(image), w, h)["top_crop"]
    return crop["x"], crop["y"], crop["x"] + crop["width"], crop["y"] + crop["height"]


def area_score_correlation(cropper: Cropper, image: np.ndarray) -> dict:
    """How much the model's free-candidate scores follow crop area alone (why a generic top free
    crop can be the whole frame): Pearson r, and the full frame's lead over the best candidate of
    at most 0.8 of the area."""
    boxes = cropper.candidates(image.shape[:2], None)
    scores = cropper.score(image, boxes)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (image.shape[0] * image.shape[1])
    smaller = scores[area <= 0.8]
    return {"pearson_r": round(float(np.corrcoef(area, scores)[0, 1]), 3), "candidates": len(boxes),
            "top_lead_over_best_at_most_0.8_area": round(float(scores.max() - smaller.max()), 3) if len(smaller) else None}


def mirror_consistency(cropper: Cropper, image: np.ndarray, box) -> float:
    """IoU of the free top crop `box` with the top crop of the mirrored photo, mirrored back: 1 when
    the choice follows the content, lower when the model prefers one side whatever the photo shows."""
    width = image.shape[1]
    box = np.asarray(box)
    m = np.array(cropper.crop(np.ascontiguousarray(image[:, ::-1]), top_k=1)[0].box)
    back = np.array([width - m[2], m[1], width - m[0], m[3]])
    return round(float(box_iou(box[None], back[None])[0, 0]), 3)


def kept_table(cropper: Cropper, photos: dict, smart, keep: bool) -> tuple[dict, dict, list]:
    kept: dict = {}
    smart_kept: dict = {}
    times = []
    for name, image in photos.items():
        start = time.perf_counter()
        for ratio in RATIOS:
            box = cropper.crop(image, aspect=ratio, top_k=1, keep_subjects=keep)[0].box
            kept[f"{name} {ratio}"] = subject_kept(box, SUBJECTS[name])
        times.append((time.perf_counter() - start) * 1000 / len(RATIOS))
        if smart is not None:
            for ratio in RATIOS[:-1]:
                smart_kept[f"{name} {ratio}"] = subject_kept(smartcrop_box(smart, image, parse_aspect(ratio)),
                                                             SUBJECTS[name])
    return kept, smart_kept, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="model file (default: demo config trained on the free population)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--images-per-user", type=int, default=3, help="prior images per user for the default model")
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0, help="training seed of the default model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timing passes over the photos")
    parser.add_argument("--out", type=Path, default=RUNS / "real_photos.json")
    args = parser.parse_args()
    set_threads(args.threads)
    if args.model is None:
        config = bench_config("demo", args.epochs, args.threads,
                              {"model.candidates": "free", "prior.max_images_per_user": args.images_per_user,
                               "seed": args.seed})
        args.model = trained_model("demo-free", config, free_population(args.users))
    model, _ = load_model(args.model, "cpu")
    cropper = Cropper.from_model(model, "cpu", personal=False)
    photos = {name: load_photo(name) for name in SUBJECTS}
    from smartcrop import SmartCrop

    smart = SmartCrop()
    kept, smart_kept, _ = kept_table(cropper, photos, smart, keep=True)
    raw_kept, _, _ = kept_table(cropper, photos, None, keep=False)
    saliency_only = Cropper.from_model(model, "cpu", personal=False)
    saliency_only.detect_faces = False
    sal_kept, _, _ = kept_table(saliency_only, photos, None, keep=True)
    methods = {"fedpic": lambda im, r: cropper.crop(im, aspect=r, top_k=5),
               "fedpic_no_rule": lambda im, r: cropper.crop(im, aspect=r, top_k=5, keep_subjects=False),
               "fedpic_saliency_only": lambda im, r: saliency_only.crop(im, aspect=r, top_k=5),
               "smartcrop": lambda im, r: smartcrop_box(smart, im, parse_aspect(r or "1:1"))}
    times: dict = {m: [] for m in methods}
    for _ in range(args.repeats):  # methods take turns photo by photo, so load slows them alike
        for image in photos.values():
            for method, run in methods.items():
                for ratio in (None, "4:5"):
                    start = time.perf_counter()
                    run(image, ratio)
                    times[method].append((time.perf_counter() - start) * 1000)

    free_boxes = {n: cropper.crop(im, top_k=1)[0].box for n, im in photos.items()}
    area_score = {n: area_score_correlation(cropper, im) for n, im in photos.items()}
    mirrored = {n: mirror_consistency(cropper, im, free_boxes[n]) for n, im in photos.items()}
    relative = {n: tuple(round(v / s, 3) for v, s in zip(b, [im.shape[1], im.shape[0]] * 2))
                for (n, b), im in zip(free_boxes.items(), photos.values())}

    # a tight taste from 5 of the user's own crops, checked on all 6 photos
    names = list(photos)
    tight = {n: grown_box(SUBJECTS[n], photos[n].shape[:2], TIGHT_GROWTH) for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        crops = []
        for n in names[:5]:
            path = save_rgb(Path(tmp) / f"{n}.png", photos[n])
            crops.append(UserCrop(path, tight[n], f"{n}"))
        personal_model, _ = load_model(args.model, "cpu")
        report = personalize_from_crops(personal_model, crops, load_config("demo", overrides={"device": "cpu"}))
    personal = Cropper.from_model(personal_model, "cpu", personal=True)

    def free_stats(c: Cropper) -> dict:
        rows = {}
        for n, im in photos.items():
            box = np.array(c.crop(im, top_k=1)[0].box)
            rows[n] = {"area": round(float((box[2] - box[0]) * (box[3] - box[1]) / (im.shape[0] * im.shape[1])), 3),
                       "iou_tight": round(float(box_iou(box[None], tight[n][None])[0, 0]), 3),
                       "kept": subject_kept(box, SUBJECTS[n])}
        return {"photos": rows, "mean_area": round(float(np.mean([r["area"] for r in rows.values()])), 3),
                "mean_iou_tight": round(float(np.mean([r["iou_tight"] for r in rows.values()])), 3),
                "kept": sum(r["kept"] for r in rows.values())}

    result = {
        "machine": machine(), "model": str(args.model), "threads": args.threads,
        "candidates": cropper.candidate_set,
        "subject_kept": {"fedpic": sum(kept.values()) / len(kept), "fedpic_no_rule": sum(raw_kept.values()) / len(raw_kept),
                         "fedpic_saliency_only": sum(sal_kept.values()) / len(sal_kept),
                         "smartcrop_fixed_ratios": sum(smart_kept.values()) / len(smart_kept),
                         "fedpic_fixed_ratios": float(np.mean([v for k, v in kept.items() if not k.endswith("free")])),
                         "cases": len(kept), "missed": [k for k, v in kept.items() if not v],
                         "smartcrop_missed": [k for k, v in smart_kept.items() if not v]},
        "median_ms_per_crop": {m: round(float(np.median(v)), 1) for m, v in times.items()},
        "free_top_crops": {"relative_boxes": relative, "distinct": len(set(relative.values())),
                           "mirror_iou": mirrored, "mirror_consistent": sum(v >= 0.9 for v in mirrored.values()),
                           "area_score_correlation": area_score},
        "tight_taste": {"train_photos": names[:5], "personalize": report.as_dict(),
                        "generic": free_stats(cropper), "personal": free_stats(personal)},
    }
    write_json(args.out, result)
    print({k: result[k] for k in ("subject_kept", "median_ms_per_crop", "free_top_crops")})
    print({k: {kk: vv for kk, vv in v.items() if kk != "photos"} for k, v in result["tight_taste"].items()
           if k in ("generic", "personal")})


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
