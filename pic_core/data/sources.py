"""Where a command's crop sets come from, by what the user points at.

`--data` may be a dataset folder (images/ + generic.csv + users/), a GAICD folder
(images/ + annotations/, split into train/test or flat with a split list), a JSON / CPC
annotation file next to an images/ folder (nested per-annotator scores or the flat
image_crop.json), or the CPC release's folder of per-image `<name>.txt` files.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Sequence, Union

from .dataset import Dataset
from .gaicd import IMAGE_EXTENSIONS, gaicd_splits, read_gaicd_dir
from .json_sets import read_cpc, read_cpc_raw, read_json
from .records import CropSet, DataError

log = logging.getLogger("pic_core.data")
CPC_RAW_FOLDER = "CollectedAnnotationsRaw"
"""The CPC release's folder of per-image annotation files."""


def open_dataset(path: Path, skip_bad: bool = False) -> Dataset:
    """A dataset folder with users/<id>.csv files."""
    return Dataset(path, skip_bad=skip_bad)


def _json_kind(path: Path) -> str:
    """'cpc' when the first entry has 'scores' and 'bboxes' (nested or flat), else 'json'."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not readable JSON ({exc})") from None
    if isinstance(data, dict) and data:
        first = next(iter(data.values()))
        if isinstance(first, dict) and "scores" in first and "bboxes" in first:
            return "cpc"
    return "json"


def _is_cpc_raw(folder: Path) -> bool:
    """A folder of `<image name>.<ext>.txt` files (the CPC release's annotations)."""
    return folder.is_dir() and any(Path(p.stem).suffix.lower() in IMAGE_EXTENSIONS for p in folder.glob("*.txt"))


def _cpc_raw_folders(path: Path) -> Optional[tuple[Path, Path]]:
    """(annotation folder, images folder) when `path` is a CPC release root or its annotation folder."""
    if _is_cpc_raw(path / CPC_RAW_FOLDER) and (path / "images").is_dir():
        return path / CPC_RAW_FOLDER, path / "images"
    if _is_cpc_raw(path) and (path.parent / "images").is_dir():
        return path, path.parent / "images"
    return None


def is_annotation_source(path: Path) -> bool:
    """True for a GAICD folder, a JSON annotation file or a CPC raw folder (not a dataset folder)."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".json"
    return path.is_dir() and ((path / "annotations").is_dir() or _cpc_raw_folders(path) is not None)


def annotated_sets(path: Path, split: Optional[str], skip_bad: bool = False,
                   split_list: Optional[Path] = None) -> list[CropSet]:
    """Scored crops of an annotation source (not a dataset folder); for GAICD only `split`.

    split None reads every image. For a GAICD folder that knows no split, a split other
    than None is an error unless `split_list` names the images of each split.
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".json":
        images = path.parent / "images"
        reader = read_cpc if _json_kind(path) == "cpc" else read_json
        return list(reader(path, images, skip_bad=skip_bad))
    if path.is_dir() and (path / "annotations").is_dir():
        return list(read_gaicd_dir(path, skip_bad=skip_bad, split=split, split_list=split_list))
    raw = _cpc_raw_folders(path) if path.is_dir() else None
    if raw:
        return list(read_cpc_raw(raw[0], raw[1], skip_bad=skip_bad))
    raise DataError(f"{path}: expected a GAICD folder with annotations/, a JSON/CPC annotation file, "
                    f"or a CPC folder with {CPC_RAW_FOLDER}/ and images/")


def crop_sets_for_pretrain(paths: Union[Path, Sequence[Path]], skip_bad: bool = False,
                           split_list: Optional[Path] = None) -> list[CropSet]:
    """Generic (population-average or dataset) crop scores for the pre stage, from one or more sources.

    A GAICD folder contributes its train split only (its test photos are the benchmark);
    a flat GAICD folder without a split list is used whole, with a warning.
    """
    sources = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    crop_sets: list[CropSet] = []
    for path in sources:
        if path.is_dir() and (path / "generic.csv").is_file() and not (path / "annotations").is_dir():
            crop_sets += Dataset(path, skip_bad=skip_bad).generic() or []
            continue
        split = None
        if path.is_dir() and (path / "annotations").is_dir():
            if gaicd_splits(path, split_list):
                split = "train"
            else:
                log.warning("%s: no train/test split known (no annotations/train/, no split list): pre-training "
                            "on every image; give --split-list to keep the test images out", path)
        crop_sets += annotated_sets(path, split, skip_bad, split_list)
    return crop_sets
