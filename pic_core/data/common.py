"""Pieces every reader shares: the skip-or-raise policy, image lookup, number parsing.

Readers never drop input quietly: each problem either raises a DataError naming the
file, line and field, or (with skip_bad=True) is counted by reason, logged, and returned
with the result, so a caller can always see what was left out.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Iterable, Optional, Union

import numpy as np

from ..geometry import validate_boxes
from .images import DEFAULT_MAX_PIXELS, ImageMissing, image_size
from .records import CropSet, DataError, format_box

log = logging.getLogger("pic_core.data")
PathLike = Union[str, Path]


class ReadResult(list):
    """The CropSets a reader produced, plus `skipped`: {reason: count} of what it left out.

    Reasons that start with "image" count images (all their crops were dropped); the
    others count single crops (rows, lines or JSON entries).
    """

    def __init__(self, crop_sets: Iterable[CropSet] = (), skipped: Optional[dict[str, int]] = None):
        super().__init__(crop_sets)
        self.skipped: dict[str, int] = dict(skipped or {})


class Problems:
    """Raise at the first bad record, or with skip_bad count it under a reason and go on."""

    def __init__(self, source: PathLike, skip_bad: bool):
        self.source = Path(source)
        self.skip_bad = skip_bad
        self.bad_counts: Counter[str] = Counter()
        self.expected_counts: Counter[str] = Counter()  # drops the format asks for (GAICD -2)
        self.examples: dict[str, str] = {}

    def bad(self, reason: str, message: str) -> None:
        """A bad record: DataError(message), or counted when skipping."""
        if not self.skip_bad:
            raise DataError(message)
        self.bad_counts[reason] += 1
        self.examples.setdefault(reason, message)

    def expected(self, reason: str) -> None:
        """A record the format itself marks as unusable: always counted, never an error."""
        self.expected_counts[reason] += 1

    def box_ok(self, box: np.ndarray, size: tuple[int, int], where: str) -> bool:
        """True for a usable box; otherwise report it (degenerate or outside) and say False."""
        problem = box_problem(box, size)
        if problem:
            self.bad(problem[0], f"{where}: {problem[1]}")
        return problem is None

    def has_crops(self, count: int, where: str) -> bool:
        """True when an image kept at least one crop; otherwise report the image."""
        if count == 0:
            self.bad("image without valid crops", f"{where}: no valid crops")
        return count > 0

    def result(self, crop_sets: Iterable[CropSet]) -> ReadResult:
        """Log what was left out (warning for bad data, info for expected drops) and wrap up."""
        for reason, count in sorted(self.bad_counts.items()):
            log.warning("%s: skipped %d x %s (first: %s)", self.source, count, reason, self.examples[reason])
        for reason, count in sorted(self.expected_counts.items()):
            log.info("%s: left out %d x %s", self.source, count, reason)
        return ReadResult(crop_sets, {**self.expected_counts, **self.bad_counts})


class ImageIndex:
    """An images/ folder: safe name -> path, and cached (height, width) from headers.

    Many users annotate the same pictures, so each header is read once per index.
    """

    def __init__(self, root: PathLike, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.root = Path(root)
        self.max_pixels = max_pixels
        self._sizes: dict[str, tuple[int, int]] = {}

    def path(self, name: str) -> Path:
        """The file of `name`; DataError for empty, absolute or escaping names."""
        if not name or not name.strip():
            raise DataError("empty image name")
        pure = PurePosixPath(name)
        if (pure.is_absolute() or ".." in pure.parts or "\\" in name or name != name.strip()
                or any(ord(c) < 32 for c in name)):
            raise DataError(f"image name {name!r} must be a plain path inside the images folder")
        return self.root.joinpath(*pure.parts)

    def size(self, name: str) -> tuple[int, int]:
        """(height, width) as displayed; DataError when missing or unreadable."""
        if name not in self._sizes:
            self._sizes[name] = image_size(self.path(name), self.max_pixels)
        return self._sizes[name]


def as_index(images: Union[ImageIndex, PathLike], max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageIndex:
    """An ImageIndex as given, or a new one over a folder (share one to share the size cache)."""
    return images if isinstance(images, ImageIndex) else ImageIndex(images, max_pixels)


def lookup_size(index: ImageIndex, name: str, where: str, problems: Problems) -> Optional[tuple[int, int]]:
    """(height, width) of image `name`, or None after reporting why it cannot be used."""
    try:
        index.path(name)
    except DataError as exc:
        problems.bad("image name invalid", f"{where}: {exc}")
        return None
    try:
        return index.size(name)
    except ImageMissing as exc:
        problems.bad("image missing", f"{where}: image {name!r}: {exc}")
    except DataError as exc:
        problems.bad("image unusable", f"{where}: image {name!r}: {exc}")
    return None


def parse_number(text: str, where: str) -> float:
    """A finite float from text, or DataError naming `where` (file:line: field)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: {text!r} is not a finite number")
    return value


def json_number(value: object, where: str) -> float:
    """A finite float from a JSON value (bools and strings are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise DataError(f"{where}: {value!r} is not a finite number")
    return float(value)


def box_problem(box: np.ndarray, size: tuple[int, int]) -> Optional[tuple[str, str]]:
    """(reason, message) when a box is degenerate or outside the image, else None."""
    box = np.asarray(box, dtype=np.float64).reshape(4)
    if not validate_boxes(box, size):
        return None
    x1, y1, x2, y2 = box
    if not np.all(np.isfinite(box)):
        return "bad bbox", f"non-finite coordinate in {format_box(box)}"
    if not (x2 > x1 and y2 > y1):
        return "bad bbox", f"needs x2 > x1 and y2 > y1, got {format_box(box)}"
    return "box outside image", f"{format_box(box)} lies outside the {size[1]}x{size[0]} image (width x height)"


def float_text(value: float) -> str:
    """Shortest text that reads back to the same float32 (scores round-trip exactly)."""
    return np.format_float_positional(np.float32(value), unique=True, trim="-")


def read_text(path: PathLike) -> str:
    """UTF-8 text of a data file; DataError for missing, empty or undecodable files."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    data = path.read_bytes()
    if not data.strip():
        raise DataError(f"{path}: file is empty")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 text ({exc.reason})") from None
