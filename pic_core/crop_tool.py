"""`fedpic crop`: photos in, best crops out (JSON, cropped images, boxes drawn)."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from tqdm.auto import tqdm

from .cropper import Cropper
from .data.images import load_image
from .geometry import parse_aspect
from .train import configure_runtime
from .visualize import cut, draw_boxes, save_rgb

log = logging.getLogger("fedpic")


def run_crop_command(args: argparse.Namespace) -> int:
    from .cli import config_from_args

    config = config_from_args(args)
    device = configure_runtime(config)
    aspect = parse_aspect(args.aspect)
    cropper = Cropper.load(args.model, args.user_state, str(device))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for path in tqdm(args.images, desc="crop", disable=not config.progress):
        image = load_image(path)
        crops = cropper.crop(image, aspect=aspect, top_k=args.top)
        stem = Path(path).stem
        files = []
        for crop in crops:
            target = out_dir / f"{stem}_crop{crop.rank}.jpg"
            save_rgb(target, cut(image, crop.box))
            files.append(target.name)
        drawn = draw_boxes(image, [c.box for c in crops], [f"{c.rank}: {c.score:.2f}" for c in crops])
        save_rgb(out_dir / f"{stem}_boxes.jpg", drawn)
        results.append({"image": str(path), "width": int(image.shape[1]), "height": int(image.shape[0]),
                         "aspect": args.aspect, "crops": [c.as_dict() | {"file": f} for c, f in zip(crops, files)]})
    (out_dir / "crops.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    log.info("wrote %d images' crops to %s", len(results), out_dir)
    return 0
