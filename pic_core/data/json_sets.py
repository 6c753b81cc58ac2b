"""JSON crop annotations, keyed by image name.

* GAICD-style JSON: {name: {"bbox": [[x1, y1, x2, y2], ...], "score": [...]}}
* CPC: {name: {"bboxes": [[x1, y1, x2, y2] x M], "scores": [[M numbers] per annotator]}};
  the CropSet keeps the (U, M) annotator scores and their mean as `scores`. The flat
  `image_crop.json` many cropping repos use ("scores": [M mean scores]) reads the same way,
  without annotator scores.
* CPC raw release: a folder of `<image name>.txt` files, each holding ONE image's entry
  {"scores": [[M numbers] per worker], "bboxes": [[x1, y1, x2, y2] x M]} encoded as a
  JSON string (so the file is a quoted string whose content is JSON): read_cpc_raw.

Keys other than these are ignored. Errors name the file, the line where the image's
entry starts and the field (e.g. `"bbox"[3]`); the writers put one image per line so
those line numbers stay useful.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

import numpy as np

from ..atomic import atomic_write_text
from .common import (ImageIndex, PathLike, Problems, ReadResult, as_index,
                     float_text, json_number, lookup_size, read_text)
from .images import DEFAULT_MAX_PIXELS
from .records import CropSet, DataError

_WS = re.compile(r"[ \t\n\r]*")
_KEYS = {"json": ("bbox", "score"), "cpc": ("bboxes", "scores")}


def _entries(path: Path, text: str) -> Iterator[tuple[str, object, int]]:
    """(image name, value, line of the entry) for each top-level key, in file order."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply") from None
    if not isinstance(whole, dict):
        raise DataError(f"{path}:1: the top level must be an object {{image name: annotations}}, "
                        f"got {type(whole).__name__}")
    # json.loads gives no positions; walk the (known-valid) top level again for line numbers
    decoder = json.JSONDecoder()
    pos = _WS.match(text, 0).end() + 1  # past "{"
    line, counted = 1, 0
    seen: set[str] = set()
    while True:
        pos = _WS.match(text, pos).end()
        if text[pos] == "}":
            return
        if text[pos] == ",":
            pos = _WS.match(text, pos + 1).end()
        line += text.count("\n", counted, pos)
        counted = pos
        name, pos = json.decoder.scanstring(text, pos + 1)
        pos = _WS.match(text, pos).end() + 1  # past ":"
        value, pos = decoder.raw_decode(text, _WS.match(text, pos).end())
        if name in seen:
            raise DataError(f"{path}:{line}: image {name!r} appears twice")
        seen.add(name)
        yield name, value, line


def _numbers(raw: object, length: Optional[int], where: str) -> list[object]:
    """A JSON list (of the given length), or DataError."""
    if not isinstance(raw, list) or (length is not None and len(raw) != length):
        want = "a list" if length is None else f"a list of {length}"
        got = f"{len(raw)} items" if isinstance(raw, list) else repr(raw)[:60]
        raise DataError(f"{where}: expected {want}, got {got}")
    return raw


def _crop_set(kind: str, name: str, value: object, where: str, index: ImageIndex,
              problems: Problems) -> Optional[CropSet]:
    """One entry as a CropSet, dropping (or raising on) bad crops; None if the image is unusable."""
    box_key, score_key = _KEYS[kind]
    entry = f"{where}: image {name!r}"
    try:
        if not isinstance(value, dict) or box_key not in value or score_key not in value:
            raise DataError(f"{entry}: expected an object with keys {box_key!r} and {score_key!r}")
        raw_boxes = _numbers(value[box_key], None, f'{entry}: field "{box_key}"')
        count = len(raw_boxes)
        flat = kind == "cpc" and isinstance(value[score_key], list) and bool(value[score_key]) and all(
            not isinstance(v, list) for v in value[score_key])  # image_crop.json: one mean per crop
        if kind == "json" or flat:
            score_rows = [_numbers(value[score_key], count, f'{entry}: field "{score_key}"')]
        else:
            score_rows = _numbers(value[score_key], None, f'{entry}: field "{score_key}"')
            if not score_rows:
                raise DataError(f'{entry}: field "{score_key}": no annotators')
            for u, row in enumerate(score_rows):
                _numbers(row, count, f'{entry}: field "{score_key}"[{u}]')
    except DataError as exc:
        problems.bad("image entry malformed", str(exc))
        return None
    size = lookup_size(index, name, where, problems)
    if size is None:
        return None
    keep_boxes, keep = [], []
    for j, raw in enumerate(raw_boxes):
        field = f'{entry}: field "{box_key}"[{j}]'
        try:
            box = np.array([json_number(v, field) for v in _numbers(raw, 4, field)])
        except DataError as exc:
            problems.bad("bad bbox", str(exc))
            continue
        try:
            for u, row in enumerate(score_rows):
                suffix = f"[{j}]" if kind == "json" or flat else f"[{u}][{j}]"
                json_number(row[j], f'{entry}: field "{score_key}"{suffix}')
        except DataError as exc:
            problems.bad("bad score", str(exc))
            continue
        if problems.box_ok(box, size, field):
            keep_boxes.append(box)
            keep.append(j)
    if not problems.has_crops(len(keep), entry):
        return None
    table = np.array([[float(row[j]) for j in keep] for row in score_rows], dtype=np.float32)
    return CropSet(name=name, image_path=index.path(name), boxes=np.array(keep_boxes),
                   scores=table[0] if kind == "json" or flat else table.mean(axis=0),
                   annotator_scores=None if kind == "json" or flat else table, source=where)


def _read(kind: str, path: PathLike, images: Union[ImageIndex, PathLike], skip_bad: bool,
          max_pixels: int) -> ReadResult:
    path = Path(path)
    index = as_index(images, max_pixels)
    problems = Problems(path, skip_bad)
    crop_sets = []
    for name, value, line in _entries(path, read_text(path)):
        crop_set = _crop_set(kind, name, value, f"{path}:{line}", index, problems)
        if crop_set:
            crop_sets.append(crop_set)
    return problems.result(crop_sets)


def read_json(path: PathLike, images: Union[ImageIndex, PathLike], skip_bad: bool = False,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> ReadResult:
    """GAICD-style JSON {name: {"bbox": [...], "score": [...]}} -> CropSets (file order)."""
    return _read("json", path, images, skip_bad, max_pixels)


def read_cpc(path: PathLike, images: Union[ImageIndex, PathLike], skip_bad: bool = False,
             max_pixels: int = DEFAULT_MAX_PIXELS) -> ReadResult:
    """CPC JSON {name: {"bboxes": [...], "scores": [[...] per annotator]}} -> CropSets."""
    return _read("cpc", path, images, skip_bad, max_pixels)


def _raw_entry(path: Path) -> object:
    """The entry of one raw CPC file: JSON, usually a JSON string whose text is the entry."""
    text = read_text(path)
    try:
        value = json.loads(text)
        if isinstance(value, str):
            value = json.loads(value)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply") from None
    return value


def read_cpc_raw(folder: PathLike, images: Union[ImageIndex, PathLike], skip_bad: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> ReadResult:
    """The CPC release's per-image files (<image name>.txt, e.g. 1234.jpg.txt) -> CropSets (name order).

    The image name is the file name without ".txt"; per-worker scores are kept as
    annotator_scores and their mean is the crop's score.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of CPC annotation files")
    index = as_index(images, max_pixels)
    problems = Problems(folder, skip_bad)
    crop_sets = []
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise DataError(f"{folder}: no CPC annotation files (<image name>.txt)")
    for path in files:
        try:
            value = _raw_entry(path)
        except DataError as exc:
            problems.bad("image entry malformed", str(exc))
            continue
        if isinstance(value, dict) and isinstance(value.get("scores"), list) and value["scores"] and all(
                not isinstance(v, list) for v in value["scores"]):
            problems.bad("image entry malformed", f'{path}:1: field "scores": expected one list per worker')
            continue
        crop_set = _crop_set("cpc", path.name[: -len(".txt")], value, f"{path}:1", index, problems)
        if crop_set:
            crop_sets.append(crop_set)
    return problems.result(crop_sets)


def _plain(value: float) -> Union[int, float]:
    """A JSON number that reads back to the same float32 (integers without ".0")."""
    number = float(float_text(value))
    return int(number) if number.is_integer() else number


def _write(path: PathLike, crop_sets: Iterable[CropSet], kind: str) -> None:
    box_key, score_key = _KEYS[kind]
    lines, seen = [], set()
    for crop_set in crop_sets:
        if crop_set.name in seen:
            raise DataError(f"{path}: image {crop_set.name!r} given twice; JSON keys must be unique")
        seen.add(crop_set.name)
        boxes = [[_plain(v) for v in box] for box in crop_set.boxes]
        if kind == "json":
            scores: list = [_plain(v) for v in crop_set.scores]
        elif crop_set.annotator_scores is None:
            raise DataError(f"{path}: image {crop_set.name!r} has no annotator scores to write as CPC")
        else:
            scores = [[_plain(v) for v in row] for row in np.asarray(crop_set.annotator_scores)]
        entry = json.dumps({box_key: boxes, score_key: scores})
        lines.append(f"{json.dumps(crop_set.name)}: {entry}")
    atomic_write_text(path, "{\n" + ",\n".join(lines) + "\n}\n")


def write_json(path: PathLike, crop_sets: Iterable[CropSet]) -> None:
    """GAICD-style JSON, one image per line; read_json reads it back unchanged."""
    _write(path, crop_sets, "json")


def write_cpc(path: PathLike, crop_sets: Iterable[CropSet]) -> None:
    """CPC JSON (needs annotator_scores), one image per line; read_cpc reads it back."""
    _write(path, crop_sets, "cpc")
