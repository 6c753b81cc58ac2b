"""A dataset folder: images/, generic.csv (optional), users/<user_id>.csv.

generic.csv holds population-average scores (the objective target); each user file
holds that user's own scores in the per-user CSV format. One ImageIndex is shared, so
an image's header is read once however many users annotate it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Optional

from .common import ImageIndex, PathLike, ReadResult, log
from .images import DEFAULT_MAX_PIXELS
from .records import CropSet, DataError, UserData
from .user_csv import read_user_csv

_USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class Dataset:
    """Read-only view of a dataset folder; files are parsed when asked for.

    With skip_bad=True bad rows and images are skipped (counted in the log); the counts
    of every file read so far are in `skipped` ({file path: {reason: count}}).
    """

    def __init__(self, root: PathLike, skip_bad: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset folder not found")
        if not (self.root / "images").is_dir():
            raise DataError(f"{self.root}: dataset folder has no images/ subfolder")
        self.skip_bad = skip_bad
        self.images = ImageIndex(self.root / "images", max_pixels)
        self.skipped: dict[str, dict[str, int]] = {}

    @property
    def users_dir(self) -> Path:
        return self.root / "users"

    @property
    def user_ids(self) -> list[str]:
        """Sorted ids of users/<id>.csv (empty when there is no users/ folder)."""
        if not self.users_dir.is_dir():
            return []
        files = [p for p in self.users_dir.glob("*.csv") if p.is_file()]
        ignored = sorted(p.name for p in files if not _USER_ID.fullmatch(p.stem))
        if ignored:
            log.warning("%s: ignored %d file(s) whose name is not a user id (letters, digits, . _ -): %s",
                        self.users_dir, len(ignored), ", ".join(ignored[:5]))
        return sorted(p.stem for p in files if _USER_ID.fullmatch(p.stem))

    def image_path(self, name: str) -> Path:
        """Path of an image named as in the CSV files (relative to images/)."""
        return self.images.path(name)

    def _read(self, path: Path) -> ReadResult:
        result = read_user_csv(path, self.images, skip_bad=self.skip_bad)
        self.skipped[str(path)] = result.skipped
        return result

    def user(self, user_id: str) -> UserData:
        """The crop sets of one user; DataError when the user has no file."""
        if not _USER_ID.fullmatch(user_id):
            raise DataError(f"{self.users_dir}: invalid user id {user_id!r} (letters, digits, . _ -)")
        path = self.users_dir / f"{user_id}.csv"
        if not path.is_file():
            raise DataError(f"{path}: no such user file")
        return UserData(user_id=user_id, crop_sets=list(self._read(path)))

    def users(self) -> Iterator[UserData]:
        """Every user, in user_ids order."""
        for user_id in self.user_ids:
            yield self.user(user_id)

    def generic(self) -> Optional[list[CropSet]]:
        """The population-average crop sets of generic.csv, or None when there is none."""
        path = self.root / "generic.csv"
        return list(self._read(path)) if path.is_file() else None
