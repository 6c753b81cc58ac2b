"""Crop galleries: one photo, the generic crop and several users' personalized crops.

Picks are made while the experiment runs (the personalized models exist only then) and
stored in gallery.json; the report draws them. One sheet per preference family (the
family's users on a test photo of its first user) and one overview sheet (the first user
of every family on the same photo), so a reader sees both agreement inside a family and
disagreement across families. Families come from the dataset's users.json (synthetic
populations); without it every user is one family, "population".

Each user tile also shows the user's own best crop where it is known: from the CSV scores
for the photo's owner, from the taste function for other users of a synthetic population.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from pic_core.atomic import atomic_write_text
from pic_core.cropper import Cropper
from pic_core.data.images import load_image
from pic_core.data.records import CropSet, DataError, UserData
from pic_core.data.scenes import Scene
from pic_core.data.tastes import Taste
from pic_core.model import CropScorer
from pic_core.protocol import json_safe
from pic_core.visualize import contact_sheet, draw_boxes

from .paths import recorded_paths

log = logging.getLogger("fedpic.gallery")

GALLERY_FILE = "gallery.json"
GALLERY_FORMAT = "fedpic-gallery"
MODEL_COLOR = (230, 57, 70)
OWN_COLOR = (255, 255, 255)
GENERIC_COLOR = (255, 183, 3)


@dataclass
class Sheet:
    """One gallery picture: a photo (with its candidates) and the users whose crops it shows."""

    name: str  # file stem of the PNG
    title: str
    photo: CropSet
    owner: str
    users: list[str]
    tiles: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "image": self.photo.name, "owner": self.owner,
                "tiles": self.tiles}


def user_families(data_dir: Path) -> dict[str, str]:
    """user id -> family from users.json; {} when the dataset has none (not synthetic)."""
    path = Path(data_dir) / "users.json"
    if not path.is_file():
        return {}
    try:
        return {uid: str(data["family"]) for uid, data in json.loads(path.read_text()).items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: unreadable user families ({exc})") from None


def plan_gallery(users: Sequence[UserData], data_dir: Path, per_family: int = 4) -> list[Sheet]:
    """The sheets: one per family, plus an overview when there are several families."""
    families = user_families(data_dir)
    groups: dict[str, list[UserData]] = {}
    for user in users:
        if user.split("test"):
            groups.setdefault(families.get(user.user_id, "population"), []).append(user)
    sheets = []
    for family, members in groups.items():
        owner = members[0]
        sheets.append(Sheet(f"gallery_{family}", f"family {family}", owner.split("test")[0], owner.user_id,
                            [u.user_id for u in members[:per_family]]))
    if len(groups) > 1:
        owner = next(iter(groups.values()))[0]
        sheets.append(Sheet("gallery_overview", "one user of each family", owner.split("test")[0], owner.user_id,
                            [members[0].user_id for members in groups.values()]))
    return sheets


class TasteOracle:
    """Any user's own scores of any photo of a synthetic population (users.json + scenes.json)."""

    def __init__(self, data_dir: Path):
        root = Path(data_dir)
        self.tastes: dict[str, Taste] = {}
        self.scenes: dict[str, dict] = {}
        if (root / "users.json").is_file() and (root / "scenes.json").is_file():
            try:
                users = json.loads((root / "users.json").read_text())
                self.tastes = {uid: Taste.from_json(uid, data) for uid, data in users.items()}
                self.scenes = json.loads((root / "scenes.json").read_text())
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise DataError(f"{root}: unreadable users.json / scenes.json ({exc})") from None

    def scores(self, user_id: str, photo: CropSet) -> Optional[np.ndarray]:
        if user_id not in self.tastes or photo.name not in self.scenes:
            return None
        scene = Scene.from_json(self.scenes[photo.name])
        return self.tastes[user_id].score(scene, photo.name, photo.boxes.astype(np.float64))


class GalleryRecorder:
    """Collects the top-1 crop of each method/user on each sheet's photo; an `on_user` hook."""

    def __init__(self, sheets: Sequence[Sheet], data_dir: Path, device: Optional[torch.device] = None):
        self.sheets = list(sheets)
        self.data_dir = Path(data_dir)
        self.device = device or torch.device("cpu")
        self.oracle = TasteOracle(self.data_dir)
        self._images: dict[str, np.ndarray] = {}

    def _image(self, photo: CropSet) -> np.ndarray:
        if photo.name not in self._images:
            self._images[photo.name] = load_image(photo.image_path)
        return self._images[photo.name]

    def _top1(self, scorer: CropScorer, photo: CropSet, personal: bool) -> list[float]:
        scores = Cropper.from_model(scorer, self.device, personal=personal).score(self._image(photo), photo.boxes)
        return _box(photo.boxes[int(np.argmax(scores))])

    def add_generic(self, scorer: CropScorer, label: str = "generic") -> None:
        """The same scorer for everyone (d_u = 0), first tile of every sheet."""
        for sheet in self.sheets:
            sheet.tiles.insert(0, {"label": label, "box": self._top1(scorer, sheet.photo, personal=False)})

    def __call__(self, user: UserData, scorer: CropScorer) -> None:
        for sheet in self.sheets:
            if user.user_id in sheet.users:
                own = (sheet.photo.scores if user.user_id == sheet.owner
                       else self.oracle.scores(user.user_id, sheet.photo))
                sheet.tiles.append({"label": user.user_id, "user": user.user_id,
                                    "box": self._top1(scorer, sheet.photo, personal=True),
                                    "own_best": None if own is None else _box(sheet.photo.boxes[int(np.argmax(own))])})

    def as_dict(self, method: str, shots: int, families: dict[str, str]) -> dict:
        return {"format": GALLERY_FORMAT, "format_version": 1, "method": method, "shots": shots,
                "data": str(self.data_dir), "families": families, "sheets": [s.as_dict() for s in self.sheets]}

    def write(self, path: Path, method: str, shots: int, families: dict[str, str]) -> Path:
        """gallery.json for `fedpic report` (atomic; the dataset recorded relative to the file's folder)."""
        payload = self.as_dict(method, shots, families) | recorded_paths("data", self.data_dir, path)
        return atomic_write_text(path, json.dumps(json_safe(payload), indent=1) + "\n")


def _box(box: np.ndarray) -> list[float]:
    return [round(float(v), 2) for v in box]


def draw_sheet(sheet: dict, image: np.ndarray, families: dict[str, str], cell: int = 360,
               columns: int = 4) -> np.ndarray:
    """A contact sheet of one gallery entry: one tile per method/user, the same photo in each.

    Users: their personalized crop in red ("model"), their own best crop in white ("own").
    """
    tiles, titles = [], []
    for tile in sheet["tiles"]:
        boxes, labels, colors = [tile["box"]], ["model"], [MODEL_COLOR]
        if tile.get("user") is None:
            labels, colors = [tile["label"]], [GENERIC_COLOR]
        elif tile.get("own_best") is not None:
            boxes.append(tile["own_best"])
            labels.append("own")
            colors.append(OWN_COLOR)
        tiles.append(draw_boxes(image, boxes, labels, colors))
        family = families.get(tile.get("user") or "", "")
        titles.append(f"{tile['label']} ({family})" if family else tile["label"])
    return contact_sheet(tiles, titles, cell=cell, columns=columns)
