"""The per-user CSV, the on-device format: `name,bbox,score[,split]`, one row per crop.

bbox is written "[x1, y1, x2, y2]" (quoted, since it holds commas); split is one of
prior | train | test and must agree across all rows of one image. Rows are grouped
into one CropSet per image, in the order the images first appear. Spaces after commas
are allowed; other columns are refused so that a typo cannot hide a field.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

import numpy as np

from ..atomic import atomic_write_text
from .common import (ImageIndex, PathLike, Problems, ReadResult, as_index,
                     float_text, lookup_size, parse_number, read_text)
from .images import DEFAULT_MAX_PIXELS
from .records import SPLITS, CropSet, DataError, format_box

REQUIRED_COLUMNS = ("name", "bbox", "score")
OPTIONAL_COLUMNS = ("split",)


def parse_box(text: str, where: str) -> np.ndarray:
    """"[x1, y1, x2, y2]" -> (4,) float64, or DataError naming `where`."""
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")) or body.count(",") != 3:
        raise DataError(f'{where}: expected "[x1, y1, x2, y2]", got {text[:60]!r}')
    return np.array([parse_number(part.strip(), where) for part in body[1:-1].split(",")])


def _header(path: Path, reader: "csv._reader") -> list[str]:
    try:
        header = [cell.strip() for cell in next(reader)]
    except csv.Error as exc:
        raise DataError(f"{path}:1: unreadable CSV header ({exc})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    unknown = [c for c in header if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown or len(set(header)) != len(header):
        raise DataError(f"{path}:1: header must be name,bbox,score[,split]; got {','.join(header)!r}"
                        + (f" (missing {', '.join(missing)})" if missing else "")
                        + (f" (unknown {', '.join(unknown)})" if unknown else ""))
    return header


class _Row:
    __slots__ = ("box", "line", "score", "split")

    def __init__(self, line: int, box: np.ndarray, score: float, split: Optional[str]):
        self.line, self.box, self.score, self.split = line, box, score, split


def numbered_rows(path: Path, reader) -> Iterator[tuple[int, list[str]]]:
    """The non-blank rows of a csv.reader with the line each starts on; malformed CSV is a
    DataError naming that line."""
    previous = reader.line_num
    while True:
        line = previous + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"{path}:{line}: malformed CSV ({exc})") from None
        previous = reader.line_num
        if any(cell.strip() for cell in row):
            yield line, row


def _parse_rows(path: Path, text: str, problems: Problems) -> dict[str, list[_Row]]:
    """Rows grouped by image name (first-appearance order); bad rows reported."""
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
    header = _header(path, reader)
    has_split = "split" in header
    groups: dict[str, list[_Row]] = {}
    for line, row in numbered_rows(path, reader):
        if len(row) != len(header):
            problems.bad("bad row", f"{path}:{line}: expected {len(header)} fields ({','.join(header)}), "
                                    f"got {len(row)}")
            continue
        cells = {key: cell.strip() for key, cell in zip(header, row)}
        if not cells["name"]:
            problems.bad("missing name", f"{path}:{line}: field name is empty")
            continue
        try:
            box = parse_box(cells["bbox"], f"{path}:{line}: field bbox")
        except DataError as exc:
            problems.bad("bad bbox", str(exc))
            continue
        try:
            score = parse_number(cells["score"], f"{path}:{line}: field score")
        except DataError as exc:
            problems.bad("bad score", str(exc))
            continue
        split = cells.get("split")
        if has_split and split not in SPLITS:
            problems.bad("bad split", f"{path}:{line}: field split: {split!r} is not one of {', '.join(SPLITS)}")
            continue
        groups.setdefault(cells["name"], []).append(_Row(line, box, score, split))
    return groups


def _group_crop_set(path: Path, name: str, rows: list[_Row], index: ImageIndex,
                    problems: Problems) -> Optional[CropSet]:
    first = rows[0]
    for row in rows[1:]:
        if row.split != first.split:
            problems.bad("image split mismatch", f"{path}:{row.line}: field split: image {name!r} is "
                                                 f"{row.split!r} here but {first.split!r} on line {first.line}")
            return None
    size = lookup_size(index, name, f"{path}:{first.line}", problems)
    if size is None:
        return None
    kept = [row for row in rows if problems.box_ok(row.box, size, f"{path}:{row.line}: field bbox")]
    if not problems.has_crops(len(kept), f"{path}:{first.line}: image {name!r}"):
        return None
    return CropSet(name=name, image_path=index.path(name), boxes=np.array([r.box for r in kept]),
                   scores=np.array([r.score for r in kept]), split=first.split, source=f"{path}:{first.line}")


def read_user_csv(path: PathLike, images: Union[ImageIndex, PathLike], skip_bad: bool = False,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> ReadResult:
    """One user's CropSets; image names are relative to `images` (a folder or an ImageIndex).

    A file with only the header is a user with no crops (an empty result); a 0-byte file
    is an error.
    """
    path = Path(path)
    index = as_index(images, max_pixels)
    problems = Problems(path, skip_bad)
    groups = _parse_rows(path, read_text(path), problems)
    crop_sets = [_group_crop_set(path, name, rows, index, problems) for name, rows in groups.items()]
    return problems.result(c for c in crop_sets if c is not None)


def write_user_csv(path: PathLike, crop_sets: Iterable[CropSet]) -> None:
    """Write CropSets atomically (temp file + rename); read_user_csv reads them back.

    The split column is written when the sets have splits (all or none must). Boxes are
    written to 0.01 px (format_box); scores exactly (shortest float32 text).
    """
    crop_sets = list(crop_sets)
    splits = {c.split for c in crop_sets}
    with_split = bool(splits - {None})
    if with_split and None in splits:
        raise DataError(f"{path}: some crop sets have a split and some do not; give all or none")
    bad = sorted(s for s in splits - {None} if s not in SPLITS)
    if bad:
        raise DataError(f"{path}: split {bad[0]!r} is not one of {', '.join(SPLITS)}")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(REQUIRED_COLUMNS + (OPTIONAL_COLUMNS if with_split else ()))
    for crop_set in crop_sets:
        tail = [crop_set.split] if with_split else []
        for box, score in zip(crop_set.boxes, crop_set.scores):
            writer.writerow([crop_set.name, format_box(box), float_text(score)] + tail)
    atomic_write_text(path, out.getvalue())
