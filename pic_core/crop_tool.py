"""`fedpic crop`: photos and folders in; the best crops out.

Writes, under --out: crops.jsonl (one JSON line per photo: boxes in original pixels as
displayed, scores, the files written, or the error), the cropped images (mirroring the
input folders) and contact sheets (sheet_001.png, ...) with the chosen boxes drawn.
Folders are searched recursively for image files; other files are skipped and counted. A
photo that cannot be read is reported (its JSON line carries the error) and the batch goes
on; the exit status is 1 when any photo failed.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Optional, Sequence

import cv2
import numpy as np
from tqdm.auto import tqdm

from .cropper import Cropper, CropResult, set_threads
from .data.images import load_image
from .data.records import DataError
from .geometry import parse_aspect
from .train import configure_runtime
from .visualize import contact_sheet, cut, draw_boxes, save_rgb

log = logging.getLogger("fedpic")

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
SHEET_IMAGES = 24
"""Photos per contact sheet (a big batch gets several sheets)."""
THUMB_SIDE = 640
"""Boxes are drawn on a copy with this long side, so line widths suit the sheet."""


@dataclass
class Inputs:
    """The photos to crop, each with the relative name its outputs get, and what was skipped."""

    photos: list[tuple[Path, Path]] = field(default_factory=list)
    skipped: int = 0


def collect_inputs(paths: Sequence[Path]) -> Inputs:
    """Files as given; folders searched recursively for IMAGE_SUFFIXES (hidden files ignored)."""
    inputs = Inputs()
    taken: set[Path] = set()
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found = []
            for item in sorted(path.rglob("*")):
                if not item.is_file() or any(part.startswith(".") for part in item.relative_to(path).parts):
                    continue
                if item.suffix.lower() in IMAGE_SUFFIXES:
                    found.append((item, Path(path.name) / item.relative_to(path)))
                else:
                    inputs.skipped += 1
        elif path.is_file():
            found = [(path, Path(path.name))]
        else:
            raise DataError(f"{path}: no such file or folder")
        for item, name in found:
            unique, index = name.with_suffix(""), 2
            while unique in taken:
                unique, index = name.with_suffix("").with_name(f"{name.stem}-{index}"), index + 1
            taken.add(unique)
            inputs.photos.append((item, unique))
    return inputs


def thumbnail_with_boxes(image: np.ndarray, crops: Sequence[CropResult]) -> np.ndarray:
    """A small copy of the photo with the chosen boxes (rank: score) drawn, for the sheet."""
    h, w = image.shape[:2]
    scale = THUMB_SIDE / max(h, w)  # tiny photos are enlarged so their boxes stay visible
    small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST)
    boxes = [[v * scale for v in c.box] for c in crops]
    return draw_boxes(small, boxes, [f"{c.rank}: {c.score:.2f}" for c in crops])


class SheetWriter:
    """Collects thumbnails and writes a contact sheet every SHEET_IMAGES photos."""

    def __init__(self, out_dir: Path, per_sheet: int = SHEET_IMAGES):
        self.out_dir = out_dir
        self.per_sheet = max(1, per_sheet)
        self.pending: list[tuple[np.ndarray, str]] = []
        self.written: list[Path] = []

    def add(self, thumb: np.ndarray, title: str) -> None:
        self.pending.append((thumb, title))
        if len(self.pending) >= self.per_sheet:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        sheet = contact_sheet([t for t, _ in self.pending], [n for _, n in self.pending])
        self.written.append(save_rgb(self.out_dir / f"sheet_{len(self.written) + 1:03d}.png", sheet))
        self.pending = []


def crop_one(cropper: Cropper, image: np.ndarray, aspect: Optional[float], top_k: int, out_dir: Path,
             name: Path, suffix: str, write_crops: bool) -> tuple[list[CropResult], list[Optional[str]], float]:
    """Crops of one decoded photo: (results, files written, milliseconds spent choosing)."""
    start = time.perf_counter()
    crops = cropper.crop(image, aspect=aspect, top_k=top_k)
    millis = (time.perf_counter() - start) * 1000
    files: list[Optional[str]] = [None] * len(crops)
    if write_crops:
        for i, crop in enumerate(crops):
            target = out_dir / name.parent / f"{name.name}_crop{crop.rank}{suffix}"
            files[i] = str(save_rgb(target, cut(image, crop.box)))
    return crops, files, millis


def _open_jsonl(spec: Optional[str], out_dir: Path) -> tuple[IO[str], bool]:
    if spec == "-":
        return sys.stdout, False
    path = Path(spec) if spec else out_dir / "crops.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("w", encoding="utf-8"), True


def run_crop_command(args: argparse.Namespace) -> int:
    from .cli import config_from_args

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
    cropper = Cropper.load(args.model, args.user_state, str(device), profile=args.profile)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    sheets = SheetWriter(out_dir, args.sheet_size)
    failures: list[tuple[Path, str]] = []
    times: list[float] = []
    stream, close = _open_jsonl(args.jsonl, out_dir)
    try:
        for path, name in tqdm(inputs.photos, desc="crop", unit="photo", disable=not config.progress):
            record: dict = {"image": str(path)}
            try:
                image = load_image(path)
                suffix = ".png" if path.suffix.lower() == ".png" else ".jpg"
                crops, files, millis = crop_one(cropper, image, aspect, args.top, out_dir, name, suffix,
                                                not args.no_crops)
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
    finally:
        if close:
            stream.close()
    log.info("cropped %d photos (median %.1f ms each, %s), %d failed, %d non-image files skipped; "
             "results in %s, %d contact sheet(s)", len(times), float(np.median(times)) if times else 0.0,
             cropper.description, len(failures), inputs.skipped, out_dir, len(sheets.written))
    for path, message in failures:
        print(f"fedpic crop: failed: {message}", file=sys.stderr)
    return 1 if failures else 0
