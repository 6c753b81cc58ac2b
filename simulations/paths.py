"""Paths recorded inside a run folder: written relative to the file that records them, so a
run folder (and the dataset beside it) can be moved, and read from any working directory.
The absolute path is kept beside it for a run folder copied away from its dataset."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Union

PathLike = Union[str, Path]


def recorded_paths(key: str, path: PathLike, file: PathLike) -> dict[str, str]:
    """{key: `path` relative to the folder holding `file` (POSIX separators), key_absolute: absolute}."""
    target, folder = Path(path).resolve(), Path(file).resolve().parent
    return {key: Path(os.path.relpath(target, folder)).as_posix(), f"{key}_absolute": str(target)}


def resolve_recorded(payload: Mapping, key: str, file: PathLike) -> Optional[Path]:
    """The existing path recorded under `key` in a file's payload: relative to the file's folder,
    else its absolute copy, else (runs written before this rule) relative to the working directory."""
    value = payload.get(key)
    if not isinstance(value, str) or not value:
        return None
    candidates = [Path(file).parent / value, payload.get(f"{key}_absolute"), value]
    for candidate in candidates:
        if isinstance(candidate, (str, Path)) and candidate and Path(candidate).exists():
            return Path(candidate)
    return None
