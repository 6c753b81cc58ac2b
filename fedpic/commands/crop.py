"""Inference commands: `fedpic crop` (photos and folders in, the best crops out) and `fedpic export`.

`fedpic crop` writes, under --out: crops.jsonl (one JSON line per photo: boxes in original
pixels as displayed, scores, the files written, or the error), the cropped images (mirroring
the input folders) and contact sheets. A photo that cannot be read is reported (its JSON line
carries the error) and the batch goes on; the exit status is 1 when any photo failed.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from contextlib import nullcontext
from typing import IO, ContextManager, Optional

from pic_core.atomic import atomic_open
from pic_core.profiles import PROFILES

from .common import add_common_options, config_from_args

log = logging.getLogger("fedpic")


def _open_jsonl(spec: Optional[str], out_dir: Path) -> ContextManager[IO[str]]:
    """stdout, or the JSON-lines file written atomically: it replaces the previous one only
    when the batch is done, so an interrupted re-run keeps the previous results."""
    if spec == "-":
        return nullcontext(sys.stdout)
    return atomic_open(Path(spec) if spec else out_dir / "crops.jsonl", "w")


def _cmd_crop(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm.auto import tqdm

    from pic_core.crop_tool import IMAGE_SUFFIXES, SheetWriter, collect_inputs, crop_one, thumbnail_with_boxes
    from pic_core.cropper import Cropper
    from pic_core.data.images import load_image
    from pic_core.data.records import DataError
    from pic_core.geometry import parse_aspect
    from pic_core.runtime import configure_runtime, set_threads

    config = config_from_args(args)
    device = configure_runtime(config)
    set_threads(config.threads)
    aspect = parse_aspect(args.aspect)
    if args.top < 1:
        raise ValueError(f"--top must be at least 1, got {args.top}")
    inputs = collect_inputs(args.images)
    if not inputs.photos:
        raise DataError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in "
                        f"{', '.join(map(str, args.images))} ({inputs.skipped} other files skipped)")
    cropper = Cropper.load(args.model, args.user_state, str(device), profile=args.profile,
                           allow_compiled=args.allow_compiled)
    if args.subjects != "auto":  # else the profile's choice: faces (default) or saliency only (fast)
        cropper.keep_subjects = args.subjects != "off"
        cropper.detect_faces = args.subjects == "faces"
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    sheets = SheetWriter(out_dir, args.sheet_size)
    failures: list[tuple[Path, str]] = []
    times: list[float] = []
    with _open_jsonl(args.jsonl, out_dir) as stream:
        for path, name in tqdm(inputs.photos, desc="crop", unit="photo", disable=not config.progress):
            record: dict = {"image": str(path)}
            try:
                image = load_image(path)
                suffix = ".png" if path.suffix.lower() == ".png" else ".jpg"
                crops, files, millis = crop_one(cropper, image, aspect, args.top, out_dir, name, suffix,
                                                not args.no_crops, source=path)
            except (DataError, OSError) as exc:
                failures.append((path, str(exc)))
                log.error("%s", exc)
                record["error"] = str(exc)
            else:
                times.append(millis)
                record.update(width=int(image.shape[1]), height=int(image.shape[0]), aspect=args.aspect,
                              ms=round(millis, 2),
                              crops=[c.as_dict() | ({"file": f} if f else {}) for c, f in zip(crops, files)])
                sheets.add(thumbnail_with_boxes(image, crops), str(name))
            stream.write(json.dumps(record) + "\n")
            stream.flush()
        sheets.flush()
    log.info("cropped %d photos (median %.1f ms each, %s), %d failed, %d non-image files skipped; "
             "results in %s, %d contact sheet(s)", len(times), float(np.median(times)) if times else 0.0,
             cropper.description, len(failures), inputs.skipped, out_dir, len(sheets.written))
    for path, message in failures:
        print(f"fedpic crop: failed: {message}", file=sys.stderr)
    return 1 if failures else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pic_core.checkpoint import load_model, load_user_state
    from pic_core.export import export_model
    from pic_core.runtime import configure_runtime

    config = config_from_args(args)
    configure_runtime(config)
    model, _ = load_model(args.model, "cpu")
    user_id = None
    if args.user_state:
        user_id = load_user_state(args.user_state, model).get("user_id")
    meta = export_model(model, args.out, personal=args.user_state is not None, user_id=user_id,
                        check=not args.no_check, compile=args.compile)
    check = meta.get("check_max_abs_diff")
    log.info("exported %s%s to %s in %.1fs (align op: %s%s%s)", args.model,
             f" + user {user_id}" if user_id else "", args.out, meta["seconds"], meta["align_op"],
             ", compiled for this CPU" if args.compile else "",
             f", max |exported - eager| = {check:.2e}" if check is not None else "")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """crop, export."""
    p = subparsers.add_parser("crop", help="best crops of photos (files or folders) for a user")
    p.add_argument("images", nargs="+", type=Path, help="image files and/or folders (searched recursively)")
    p.add_argument("--model", type=Path, required=True,
                   help="model file, or a .pt2 program from `fedpic export` (needs --allow-compiled)")
    p.add_argument("--allow-compiled", action="store_true",
                   help="allow a .pt2 program as --model: it can run native code, so only one you trust")
    p.add_argument("--user-state", type=Path, help="user state (default: the generic model)")
    p.add_argument("--profile", default="default", choices=sorted(PROFILES),
                   help="runtime preset; `fast` is for a model trained with `--config fast`")
    p.add_argument("--aspect", help="output aspect ratio W:H: 16:9, 4:3, 1:1, 4:5, 9:16, ... (default: free)")
    p.add_argument("--top", type=int, default=3, help="how many crops per image")
    p.add_argument("--subjects", choices=("auto", "faces", "saliency", "off"), default="auto",
                   help="keep subjects whole: faces as heads, else the salient region (faces, ~30 ms a photo), "
                        "saliency only (~2 ms), or off; auto: the profile's (default: faces, fast: saliency)")
    p.add_argument("--out", type=Path, default=Path("crops"), help="output folder")
    p.add_argument("--jsonl", help="where to write the JSON lines (default OUT/crops.jsonl; - for stdout)")
    p.add_argument("--no-crops", action="store_true", help="do not write the cropped images")
    p.add_argument("--sheet-size", type=int, default=24, help="photos per contact sheet")
    add_common_options(p)
    p.set_defaults(func=_cmd_crop)

    p = subparsers.add_parser("export", help="a model (+ a user state) as a torch.export program for `fedpic crop`")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--user-state", type=Path, help="bake this user's d_u in (default: the generic model)")
    p.add_argument("--out", type=Path, required=True, help="file to write (.pt2)")
    p.add_argument("--compile", action="store_true",
                   help="also compile it ahead of time with AOTInductor for this machine's CPU (about a minute)")
    p.add_argument("--no-check", action="store_true", help="skip comparing the program with the eager model")
    add_common_options(p)
    p.set_defaults(func=_cmd_export)
