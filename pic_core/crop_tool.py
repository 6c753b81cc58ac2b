"""Batch cropping, the library behind `fedpic crop` (fedpic/commands/crop.py): photos and folders in,
the best crops out.

Writes, under --out: crops.jsonl (one JSON line per photo: boxes in original pixels as
displayed, scores, the files written, or the error), the cropped images (mirroring the
input folders) and contact sheets (sheet_001.png, ...) with the chosen boxes drawn.
Folders are searched recursively for image files; other files are skipped and counted. A
photo that cannot be read is reported (its JSON line carries the error) and the batch goes
on; the exit status is 1 when any photo failed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
from PIL import Image

from .cropper import Cropper, CropResult
from .data.records import DataError
from .visualize import contact_sheet, cut, draw_boxes, save_rgb


EXIF_ORIENTATION = 0x0112
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
SHEET_IMAGES = 24
"""Photos per contact sheet (a big batch gets several sheets)."""
THUMB_SIDE = 640
"""Boxes are drawn on a copy with this long side, so line widths suit the sheet."""
SHEET_LEGEND = ("Boxes: the top crops of each photo, '#rank score' (#1 red, thickest). The score is the "
                "model's preference for that crop for this user: higher is better, comparable only "
                "between crops of the same photo.")


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
    return draw_boxes(small, boxes, [f"#{c.rank} {c.score:.2f}" for c in crops])


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
        sheet = contact_sheet([t for t, _ in self.pending], [n for _, n in self.pending], legend=SHEET_LEGEND)
        self.written.append(save_rgb(self.out_dir / f"sheet_{len(self.written) + 1:03d}.png", sheet))
        self.pending = []


def kept_exif(path: Path) -> Optional[bytes]:
    """The photo's EXIF block with the orientation set to 1 (the pixels written are already
    upright), or None when it has none or it cannot be read."""
    try:
        with Image.open(path) as img:
            exif = img.getexif()
            if not len(exif):
                return None
            exif[EXIF_ORIENTATION] = 1
            return exif.tobytes()
    except Exception:  # a broken EXIF block must not stop the crop being written
        return None


def crop_one(cropper: Cropper, image: np.ndarray, aspect: Optional[float], top_k: int, out_dir: Path,
             name: Path, suffix: str, write_crops: bool,
             source: Optional[Path] = None) -> tuple[list[CropResult], list[Optional[str]], float]:
    """Crops of one decoded photo: (results, files written, milliseconds spent choosing).
    Written crops keep the EXIF metadata of `source` (orientation normalized)."""
    start = time.perf_counter()
    crops = cropper.crop(image, aspect=aspect, top_k=top_k)
    millis = (time.perf_counter() - start) * 1000
    files: list[Optional[str]] = [None] * len(crops)
    if write_crops:
        exif = kept_exif(source) if source is not None else None
        for i, crop in enumerate(crops):
            target = out_dir / name.parent / f"{name.name}_crop{crop.rank}{suffix}"
            files[i] = str(save_rgb(target, cut(image, crop.box), exif=exif))
    return crops, files, millis
