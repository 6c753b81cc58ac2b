"""The in-memory form of annotated crops, shared by every reader and writer.

A `CropSet` is one image with its scored candidate crops (boxes in original pixels).
Readers turn GAICD txt, GAICD/CPC JSON and per-user CSV files into CropSets; the
trainers, evaluators and the federation only ever see CropSets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

SPLITS = ("prior", "train", "test")


class DataError(ValueError):
    """Unusable input data; the message names the file (and line or field when there is one)."""


@dataclass
class CropSet:
    name: str  # image file name, relative to the dataset's images/ folder
    image_path: Path
    boxes: np.ndarray  # (M, 4) float32, [x1, y1, x2, y2] in original pixels
    scores: np.ndarray  # (M,) float32, higher is better
    split: Optional[str] = None  # prior | train | test | None (no split column)
    annotator_scores: Optional[np.ndarray] = None  # (U, M) per-annotator scores (CPC-style), when known
    source: str = ""  # "file:line" of the first row, for messages

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if len(self.boxes) != len(self.scores):
            raise DataError(f"{self.source or self.name}: {len(self.boxes)} boxes but {len(self.scores)} scores")


@dataclass
class UserData:
    user_id: str
    crop_sets: list[CropSet] = field(default_factory=list)

    def split(self, name: Optional[str]) -> list[CropSet]:
        """Crop sets of one split; `prior` also takes the sets that have no split."""
        if name is None:
            return list(self.crop_sets)
        if name == "prior":
            return [c for c in self.crop_sets if c.split in ("prior", None)]
        return [c for c in self.crop_sets if c.split == name]


def format_box(box: np.ndarray) -> str:
    """The CSV spelling of a box: "[x1, y1, x2, y2]" with at most 2 decimals."""
    return "[" + ", ".join(f"{float(v):.2f}".rstrip("0").rstrip(".") for v in box) + "]"
