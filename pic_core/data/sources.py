"""Where a command's crop sets come from, by what the user points at.

`--data` may be a dataset folder (images/ + generic.csv + users/), a GAICD folder
(images/ + annotations/), or a JSON / CPC annotation file next to an images/ folder.
"""
from __future__ import annotations

import json
from pathlib import Path

from .dataset import Dataset
from .gaicd import read_gaicd_dir
from .json_sets import read_cpc, read_json
from .records import CropSet, DataError


def open_dataset(path: Path, skip_bad: bool = False) -> Dataset:
    """A dataset folder with users/<id>.csv files."""
    return Dataset(path, skip_bad=skip_bad)


def _json_kind(path: Path) -> str:
    """'cpc' when the first entry has per-annotator 'scores', else 'json'."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not readable JSON ({exc})") from None
    if isinstance(data, dict) and data:
        first = next(iter(data.values()))
        if isinstance(first, dict) and "scores" in first and "bboxes" in first:
            return "cpc"
    return "json"


def crop_sets_for_pretrain(path: Path, skip_bad: bool = False) -> list[CropSet]:
    """Generic (population-average or dataset) crop scores for the pre stage."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".json":
        images = path.parent / "images"
        reader = read_cpc if _json_kind(path) == "cpc" else read_json
        return list(reader(path, images, skip_bad=skip_bad))
    if path.is_dir() and (path / "annotations").is_dir():
        return list(read_gaicd_dir(path, skip_bad=skip_bad))
    if path.is_dir() and (path / "generic.csv").is_file():
        return Dataset(path, skip_bad=skip_bad).generic() or []
    raise DataError(f"{path}: expected a dataset folder with generic.csv, a GAICD folder with annotations/, "
                    "or a JSON/CPC annotation file")
