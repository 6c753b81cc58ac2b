"""PIC's per-user CSV folders -> fedpic's dataset folder (`fedpic convert`).

PIC (Cooperxjt/PIC) ships one CSV per user and split: `<N>/train/<user>_train.csv` (the
few-shot pool) and `<N>/val/<user>_val.csv` (held out), plus prior users as
`<folder>/<user>.csv`. Each file has the columns name, bbox ("[x1, y1, x2, y2]"), score,
often order_pre and order_final, and, when pandas wrote it with its index, a leading
unnamed index column. fedpic keeps name, bbox and score and maps the folder to a split:
train -> train, val -> test, prior -> prior.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Optional, Union

from .common import ImageIndex, PathLike, Problems, ReadResult, as_index, parse_number, read_text
from .images import DEFAULT_MAX_PIXELS
from .records import CropSet, DataError
from .user_csv import _group_crop_set, _Row, numbered_rows, parse_box, write_user_csv

PIC_SPLITS = {"train": "train", "val": "test"}
"""PIC's split folder -> fedpic's split."""
USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _columns(path: Path, header: list[str]) -> dict[str, int]:
    """Column positions of name, bbox, score; a leading pandas index column is allowed."""
    cells = [c.strip() for c in header]
    found = {}
    for key in ("name", "bbox", "score"):
        if cells.count(key) != 1:
            raise DataError(f"{path}:1: header needs exactly one {key!r} column (PIC: name,bbox,score[,order_pre,"
                            f"order_final], optionally after a pandas index column); got {','.join(cells)!r}")
        found[key] = cells.index(key)
    return found


def read_pic_csv(path: PathLike, images: Union[ImageIndex, PathLike], split: Optional[str],
                 skip_bad: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> ReadResult:
    """One PIC per-user CSV as CropSets of `split` (rows grouped per image, first-appearance order)."""
    path = Path(path)
    index = as_index(images, max_pixels)
    problems = Problems(path, skip_bad)
    reader = csv.reader(io.StringIO(read_text(path), newline=""), skipinitialspace=True)
    try:
        header = next(reader)
    except csv.Error as exc:
        raise DataError(f"{path}:1: unreadable CSV header ({exc})") from None
    columns = _columns(path, header)
    groups: dict[str, list[_Row]] = {}
    for line, row in numbered_rows(path, reader):
        if len(row) != len(header):
            problems.bad("bad row", f"{path}:{line}: expected {len(header)} fields, got {len(row)}")
            continue
        name = row[columns["name"]].strip()
        if not name:
            problems.bad("missing name", f"{path}:{line}: field name is empty")
            continue
        try:
            box = parse_box(row[columns["bbox"]], f"{path}:{line}: field bbox")
        except DataError as exc:
            problems.bad("bad bbox", str(exc))
            continue
        try:
            score = parse_number(row[columns["score"]].strip(), f"{path}:{line}: field score")
        except DataError as exc:
            problems.bad("bad score", str(exc))
            continue
        groups.setdefault(name, []).append(_Row(line, box, score, split))
    crop_sets = [_group_crop_set(path, name, rows, index, problems) for name, rows in groups.items()]
    return problems.result(c for c in crop_sets if c is not None)


def _user_files(folder: Path, suffix: str) -> dict[str, Path]:
    """{user id: file} of `<user><suffix>.csv` files in a folder; DataError for odd names."""
    files = {}
    for path in sorted(folder.glob("*.csv")):
        stem = path.stem
        if suffix and not stem.endswith(suffix):
            raise DataError(f"{path}: expected a file named <user>{suffix}.csv")
        user = stem[: len(stem) - len(suffix)] if suffix else stem
        if not USER_ID.fullmatch(user):
            raise DataError(f"{path}: user id {user!r} must be letters, digits, '.', '_' or '-'")
        files[user] = path
    return files


def convert_pic(pic: Optional[PathLike], images: PathLike, out: PathLike, prior: Optional[PathLike] = None,
                skip_bad: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, dict[str, int]]:
    """Write `out/users/<user>.csv` (+ `out/images` -> images) from PIC folders; {user: {split: images}}.

    `pic` is one shot-count folder (holding train/ and val/), `prior` a folder of prior
    users' CSVs; a user present in several gets all its splits in one file.
    """
    images, out = Path(images), Path(out)
    if not images.is_dir():
        raise DataError(f"{images}: images folder not found")
    index = ImageIndex(images, max_pixels)
    sources: list[tuple[str, str, Path]] = []
    if pic is not None:
        pic = Path(pic)
        present = [s for s in PIC_SPLITS if (pic / s).is_dir()]
        if not present:
            raise DataError(f"{pic}: not a PIC split folder (no train/ or val/ subfolder)")
        for folder in present:
            sources += [(user, PIC_SPLITS[folder], path)
                        for user, path in _user_files(pic / folder, f"_{folder}").items()]
    if prior is not None:
        if not Path(prior).is_dir():
            raise DataError(f"{prior}: prior folder not found")
        sources += [(user, "prior", path) for user, path in _user_files(Path(prior), "").items()]
    if not sources:
        raise DataError(f"{pic or prior}: no PIC user CSV files found")
    users: dict[str, list[CropSet]] = {}
    for user, split, path in sources:
        sets = read_pic_csv(path, index, split, skip_bad=skip_bad)
        taken = {c.name: c.split for c in users.get(user, [])}
        for crop_set in sets:
            if crop_set.name in taken:
                raise DataError(f"{crop_set.source}: image {crop_set.name!r} of user {user} is already in "
                                f"split {taken[crop_set.name]!r}; an image must be in one split")
        users.setdefault(user, []).extend(sets)
    (out / "users").mkdir(parents=True, exist_ok=True)
    link = out / "images"
    if not link.exists():
        link.symlink_to(images.resolve(), target_is_directory=True)
    elif link.resolve() != images.resolve():
        raise DataError(f"{link}: exists and is not {images}")
    counts = {}
    for user, sets in sorted(users.items()):
        write_user_csv(out / "users" / f"{user}.csv", sets)
        counts[user] = {s: sum(c.split == s for c in sets) for s in ("prior", "train", "test")}
    return counts
