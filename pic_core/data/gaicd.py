"""GAICD annotations: one txt per image, one line per crop `y1 x1 y2 x2 score`.

Note the coordinate order (rows first); boxes come out as [x1, y1, x2, y2]. A score of
-2 marks a crop the annotators rejected: it is left out and counted, never an error.
A GAICD folder holds images/ and annotations/, either flat or split into subfolders
(the release uses images/{train,test}); the subfolder name becomes the CropSet split.
A split list (JSON {"train": [names], "test": [names]}, as public cropping repos ship)
gives the split of a flat folder. Asked for one split, the reader never opens an image
(nor an annotation) of another: pre-training on GAICD must not see its test photos.
"""
from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Optional

import numpy as np

from .common import (ImageIndex, PathLike, Problems, ReadResult, lookup_size, parse_number,
                     read_text)
from .images import DEFAULT_MAX_PIXELS
from .records import CropSet, DataError

INVALID_SCORE = -2.0
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_FIELDS = ("y1", "x1", "y2", "x2", "score")
EXPECTED_INVALID = "invalid crop (score -2)"
NOT_LISTED = "image not in the split list"


def read_split_list(path: PathLike) -> dict[str, str]:
    """A split list {split: [image names]} -> {image stem: split}.

    Names may carry a folder or an extension ("train/211.jpg", "211.jpg", "211"): images
    are matched by stem. An image listed under two splits is an error (it would leak).
    """
    path = Path(path)
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}:1: a split list must be an object {{split: [image names]}}, "
                        f"got {type(data).__name__ if not isinstance(data, dict) else 'an empty object'}")
    stems: dict[str, str] = {}
    for split, names in data.items():
        if not isinstance(names, list):
            raise DataError(f"{path}: field {split!r}: expected a list of image names, got {type(names).__name__}")
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name.strip():
                raise DataError(f"{path}: field {split!r}[{i}]: expected an image name, got {name!r}")
            stem = PurePosixPath(name.strip().replace("\\", "/")).stem
            other = stems.setdefault(stem, split)
            if other != split:
                raise DataError(f"{path}: field {split!r}[{i}]: image {name!r} is also listed under {other!r}")
    return stems


def _read_annotation(txt: Path, index: ImageIndex, name: str, split: Optional[str],
                     problems: Problems) -> Optional[CropSet]:
    """One image's CropSet, or None when the image as a whole had to be skipped."""
    size = lookup_size(index, name, str(txt), problems)
    if size is None:
        return None
    try:
        text = read_text(txt)
    except DataError as exc:
        problems.bad("image annotation unreadable", str(exc))
        return None
    boxes, scores = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(_FIELDS):
            problems.bad("bad line", f"{txt}:{number}: expected 5 numbers 'y1 x1 y2 x2 score', "
                                     f"got {len(fields)} fields: {line.strip()[:80]!r}")
            continue
        try:
            y1, x1, y2, x2, score = (parse_number(v, f"{txt}:{number}: field {f}") for f, v in zip(_FIELDS, fields))
        except DataError as exc:
            problems.bad("bad number", str(exc))
            continue
        if score == INVALID_SCORE:
            problems.expected(EXPECTED_INVALID)
            continue
        box = np.array([x1, y1, x2, y2])
        if problems.box_ok(box, size, f"{txt}:{number}"):
            boxes.append(box)
            scores.append(score)
    if not problems.has_crops(len(boxes), str(txt)):
        return None
    return CropSet(name=name, image_path=index.path(name), boxes=np.array(boxes), scores=np.array(scores),
                   split=split, source=f"{txt}:1")


def read_gaicd_txt(path: PathLike, image_path: PathLike, split: Optional[str] = None, skip_bad: bool = False,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> ReadResult:
    """The CropSet of one annotation file (a ReadResult of length 0 or 1)."""
    image_path = Path(image_path)
    problems = Problems(path, skip_bad)
    crop_set = _read_annotation(Path(path), ImageIndex(image_path.parent, max_pixels), image_path.name, split,
                                problems)
    return problems.result([crop_set] if crop_set else [])


def _images_by_stem(folder: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    if folder.is_dir():
        for entry in sorted(folder.iterdir()):
            if entry.is_file() and entry.suffix.lower() in IMAGE_EXTENSIONS:
                found.setdefault(entry.stem, []).append(entry.name)
    return found


def gaicd_splits(root: PathLike, split_list: Optional[PathLike] = None) -> set[str]:
    """The splits a GAICD folder knows: its annotation subfolders, or the split list's."""
    if split_list is not None:
        return set(read_split_list(split_list).values())
    notes = Path(root) / "annotations"
    return {d.name for d in notes.iterdir() if d.is_dir()} if notes.is_dir() else set()


def read_gaicd_dir(root: PathLike, skip_bad: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                   split: Optional[str] = None, split_list: Optional[PathLike] = None) -> ReadResult:
    """All annotated images of a GAICD folder (images/ + annotations/, flat or split).

    annotations/<stem>.txt pairs with images/<stem>.<ext> (split None, or the split list's);
    annotations/<split>/<stem>.txt with images/<split>/<stem>.<ext>. Names are relative
    to images/, e.g. "train/211.jpg". With `split`, only that split's files are opened.
    """
    root = Path(root)
    images_dir, notes_dir = root / "images", root / "annotations"
    for folder in (images_dir, notes_dir):
        if not folder.is_dir():
            raise DataError(f"{root}: not a GAICD folder (no {folder.name}/ subfolder)")
    listed = read_split_list(split_list) if split_list is not None else None
    if split is not None:
        known = set(listed.values()) if listed is not None else gaicd_splits(root)
        if split not in known:
            raise DataError(f"{root}: no {split!r} split (found: {', '.join(sorted(known)) or 'none'}; "
                            "give a split list for a flat folder)")
    index = ImageIndex(images_dir, max_pixels)
    problems = Problems(root, skip_bad)
    groups = [(None, notes_dir)] + [(d.name, d) for d in sorted(notes_dir.iterdir()) if d.is_dir()]
    crop_sets = []
    for folder_split, folder in groups:
        if split is not None and listed is None and folder_split != split:
            continue  # another split's folder: not even listed
        prefix = "" if folder_split is None else f"{folder_split}/"
        stems = None
        for txt in sorted(folder.glob("*.txt")):
            image_split = folder_split
            if listed is not None:
                image_split = listed.get(txt.stem)
                if image_split is None:
                    problems.expected(NOT_LISTED)
                    continue
                if folder_split is not None and image_split != folder_split:
                    raise DataError(f"{txt}: the split list puts {txt.stem} in {image_split!r}, "
                                    f"the folder in {folder_split!r}")
            if split is not None and image_split != split:
                continue
            if stems is None:
                stems = _images_by_stem(images_dir / prefix)
            matches = stems.get(txt.stem, [])
            if len(matches) != 1:
                what = "no image" if not matches else f"several images ({', '.join(matches)})"
                reason = "image missing" if not matches else "image ambiguous"
                problems.bad(reason, f"{txt}: {what} named {txt.stem}.* in {images_dir / prefix}")
                continue
            crop_set = _read_annotation(txt, index, prefix + matches[0], image_split, problems)
            if crop_set:
                crop_sets.append(crop_set)
    if not crop_sets and not problems.bad_counts:
        where = f"{notes_dir}" if split is None else f"{notes_dir} for split {split!r}"
        raise DataError(f"{root}: no annotation files in {where}")
    return problems.result(crop_sets)
