"""Personalizing from the crops a user made themselves (`fedpic personalize --crops FILE`).

A user rarely scores dozens of candidate crops, but they do crop their photos. For a few
photos they give the box they chose (e.g. from a photo editor); each box becomes a
preference over that photo's candidates: the closer a candidate is to the user's crop
(IoU, sharpened), the better it is. The user's box itself and boxes of its aspect ratio join
the free grid candidates. d_u is then fitted on the device with the fast path (backbone once
per photo, then the personal parameters on cached crop features).

File formats (relative image paths are taken from the crops file's folder):
  CSV:        image,x1,y1,x2,y2          (a header line is optional; '#' starts a comment)
  JSON lines: {"image": "a.jpg", "box": [x1, y1, x2, y2]}
Boxes are in pixels of the photo as displayed (EXIF orientation applied). A photo may be
listed more than once (several acceptable crops): a candidate counts its best overlap.

The same crops train a device in the federation: its crops file (node config `crops-file`,
else `<data-dir>/crops/<user>.csv` or `.jsonl`) becomes samples (`crop_samples`) that join
the user's scored CSV rows, when there are any, in every local round.
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from . import metrics
from .config import Config
from .cropper import Cropper
from .data.images import load_image
from .data.records import DataError
from .geometry import aspect_anchors, box_iou, clip_boxes, to_resized
from .model import CropScorer
from .samples import Sample, boxes_with_batch
from .train import TrainLog, cached_head_inputs, train_personal

log = logging.getLogger("fedpic")

SHARPNESS = 2.0
"""Preference of a candidate = IoU(candidate, user's crop) ** SHARPNESS."""
WEAK_OVERLAP = 0.5
"""Below this best candidate IoU, a photo's crop teaches little: say so."""
CSV_COLUMNS = ("image", "x1", "y1", "x2", "y2")
FAST_EPOCHS = 10  # the fast path's settings, measured in benchmarks/fewshot.py (benchmarks/RESULTS.md)
FAST_LR = 5e-2  # d_u
FAST_HEAD_LR = 1e-3  # personal crop-head offsets
"""Fast-path settings (benchmarks/fewshot.py): the 16-d d_u needs a larger step than the
paper's full fine-tuning (Adam 1e-3, 10 epochs); the crop-head offsets take the paper's step.
With the offsets, 10 epochs over 5 photos match full fine-tuning in well under a second."""

PathLike = Union[str, Path]
CROPS_FOLDER = "crops"
"""`<data-dir>/crops/<user>.csv` (or .jsonl): where a device finds its user's own crops by default."""


@dataclass
class UserCrop:
    """One crop a user made: the photo, the box (displayed pixels) and where it was read."""

    image: Path
    box: np.ndarray  # (4,) float64
    source: str  # "file:line"


@dataclass
class PhotoCrops:
    """One photo with every box the user gave for it."""

    image: Path
    boxes: np.ndarray  # (B, 4)
    sources: list[str] = field(default_factory=list)


def _parse_box(values: Sequence, where: str) -> np.ndarray:
    if len(values) != 4:
        raise DataError(f"{where}: a box needs 4 numbers x1, y1, x2, y2, got {len(values)}")
    try:
        box = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: box coordinates must be numbers, got {list(values)}") from None
    if not np.all(np.isfinite(box)):
        raise DataError(f"{where}: box has a non-finite coordinate {list(values)}")
    if box[2] <= box[0] or box[3] <= box[1]:
        raise DataError(f"{where}: box needs x2 > x1 and y2 > y1, got {box.tolist()}")
    return box


def _image_path(text: str, base: Path, where: str) -> Path:
    text = (text or "").strip()
    if not text:
        raise DataError(f"{where}: empty image name")
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def _read_json_lines(path: Path, lines: list[str]) -> list[UserCrop]:
    crops = []
    for number, line in enumerate(lines, 1):
        where = f"{path}:{number}"
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(item, dict) or "image" not in item or "box" not in item:
            raise DataError(f'{where}: expected {{"image": ..., "box": [x1, y1, x2, y2]}}')
        if not isinstance(item["image"], str) or not isinstance(item["box"], list):
            raise DataError(f"{where}: 'image' must be a string and 'box' a list of 4 numbers")
        crops.append(UserCrop(_image_path(item["image"], path.parent, where), _parse_box(item["box"], where), where))
    return crops


def _read_csv(path: Path, lines: list[str]) -> list[UserCrop]:
    crops = []
    rows = csv.reader(lines)
    for number, row in enumerate(rows, 1):
        where = f"{path}:{number}"
        cells = [c.strip() for c in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if [c.lower() for c in cells] == list(CSV_COLUMNS):
            continue  # header
        if len(cells) != 5:
            raise DataError(f"{where}: expected 5 columns {','.join(CSV_COLUMNS)}, got {len(cells)}")
        crops.append(UserCrop(_image_path(cells[0], path.parent, where), _parse_box(cells[1:], where), where))
    return crops


def read_user_crops(path: PathLike) -> list[UserCrop]:
    """Every crop in a CSV or JSON-lines file (by extension, else by the first character)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"{path}: cannot read crops file ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: crops file is not UTF-8 text") from None
    lines = text.splitlines()
    first = next((line.lstrip() for line in lines if line.strip() and not line.lstrip().startswith("#")), "")
    as_json = path.suffix.lower() in (".jsonl", ".json", ".ndjson") or (path.suffix.lower() != ".csv"
                                                                       and first.startswith("{"))
    crops = _read_json_lines(path, lines) if as_json else _read_csv(path, lines)
    if not crops:
        raise DataError(f"{path}: no crops found (expected lines like "
                        + ('{"image": "a.jpg", "box": [x1, y1, x2, y2]})' if as_json else "a.jpg,x1,y1,x2,y2)"))
    return crops


def group_by_photo(crops: Sequence[UserCrop]) -> list[PhotoCrops]:
    """Crops grouped per photo, in first-seen order."""
    photos: dict[Path, PhotoCrops] = {}
    for crop in crops:
        entry = photos.setdefault(crop.image, PhotoCrops(crop.image, np.zeros((0, 4))))
        entry.boxes = np.vstack([entry.boxes, crop.box[None]])
        entry.sources.append(crop.source)
    return list(photos.values())


def preference_scores(candidates: np.ndarray, user_boxes: np.ndarray, sharpness: float = SHARPNESS) -> np.ndarray:
    """Each candidate's best IoU with the user's boxes, raised to `sharpness` (float32)."""
    return (box_iou(candidates, user_boxes).max(axis=1) ** sharpness).astype(np.float32)


def training_candidates(cropper: Cropper, size: tuple[int, int], user_boxes: np.ndarray) -> tuple[np.ndarray, int]:
    """(candidates, count of free ones first): the free grid, then boxes of each user box's
    aspect ratio, then the user's boxes themselves."""
    free = cropper.candidates(size)
    extra = [aspect_anchors(size[0], size[1], (b[2] - b[0]) / (b[3] - b[1])) for b in user_boxes]
    return np.concatenate([free, *extra, user_boxes.astype(np.float32)]).astype(np.float32), len(free)


@dataclass
class PhotoSample:
    """A user's photo prepared for the fast path."""

    sample: Sample
    user_boxes: np.ndarray  # (B, 4) displayed pixels
    candidates: np.ndarray  # (M, 4) displayed pixels
    free: int  # the first `free` candidates are what `fedpic crop` scores without --aspect


def prepare_photo(cropper: Cropper, photo: PhotoCrops, sharpness: float = SHARPNESS,
                  max_pixels: Optional[int] = None) -> PhotoSample:
    """Decode a photo, check its boxes against its size, and score its candidates."""
    image = load_image(photo.image, **({} if max_pixels is None else {"max_pixels": max_pixels}))
    height, width = image.shape[:2]
    for box, where in zip(photo.boxes, photo.sources):
        if box[0] < -1 or box[1] < -1 or box[2] > width + 1 or box[3] > height + 1:
            raise DataError(f"{where}: box {box.tolist()} lies outside {photo.image.name}, which is "
                            f"{width}x{height} as displayed (EXIF orientation applied)")
    user_boxes = clip_boxes(photo.boxes, (height, width)).astype(np.float64)
    candidates, free = training_candidates(cropper, (height, width), user_boxes)
    scores = preference_scores(candidates, user_boxes, sharpness)
    tensor, resized = cropper.prepare(image)
    net_boxes = boxes_with_batch(to_resized(candidates, (height, width), resized))
    sample = Sample(photo.image.name, tensor[0].cpu(), net_boxes, torch.from_numpy(scores), (height, width))
    best = float(box_iou(candidates[:free], user_boxes).max()) if free else 0.0
    if best < WEAK_OVERLAP:
        log.warning("%s: no free candidate is close to your crop (best IoU %.2f); this photo teaches little",
                    photo.sources[0], best)
    return PhotoSample(sample, user_boxes, candidates, free)


def top1_iou(scores: np.ndarray, photo: PhotoSample) -> float:
    """IoU between the best free candidate under `scores` and the user's nearest crop."""
    return metrics.top1_iou(scores[: photo.free], photo.candidates[: photo.free], photo.user_boxes)


def default_crops_file(data_dir: PathLike, user_id: str) -> Optional[Path]:
    """`<data-dir>/crops/<user>.csv|.jsonl` when one exists (CSV first), else None."""
    for suffix in (".csv", ".jsonl"):
        path = Path(data_dir) / CROPS_FOLDER / f"{user_id}{suffix}"
        if path.is_file():
            return path
    return None


def plain_cropper(model: CropScorer, device: Union[str, torch.device] = "cpu") -> Cropper:
    """A Cropper that only prepares training photos (network input, candidates): no scoring
    backend, and the model is left as it is (Cropper.from_model may compile it or make it
    channels-last)."""
    return Cropper(None, model.config.short_side, device, model=model,  # type: ignore[arg-type]
                   candidate_set=model.config.candidates)


def crop_samples(model: CropScorer, crops: Sequence[UserCrop], device: Union[str, torch.device] = "cpu",
                 sharpness: float = SHARPNESS) -> list[PhotoSample]:
    """Every photo of a user's crops prepared as a training sample (the user's crop scores 1)."""
    cropper = plain_cropper(model, device)
    return [prepare_photo(cropper, photo, sharpness) for photo in group_by_photo(crops)]


@dataclass
class CropsReport:
    photos: int
    crops: int
    top1_iou_generic: float
    top1_iou_personal: float
    train: TrainLog

    def as_dict(self) -> dict:
        return {"photos": self.photos, "crops": self.crops, "top1_iou_generic": round(self.top1_iou_generic, 4),
                "top1_iou_personal": round(self.top1_iou_personal, 4), "train": self.train.as_dict()}


def personalize_from_crops(model: CropScorer, crops: Sequence[UserCrop], config: Config,
                           device: Union[str, torch.device] = "cpu", sharpness: float = SHARPNESS,
                           epochs: int = FAST_EPOCHS, lr: float = FAST_LR,
                           head_lr: float = FAST_HEAD_LR, scored: Sequence[Sample] = ()) -> CropsReport:
    """Fit the model's PERSONAL parameters to a user's own crops with the fast path.

    `scored`: samples of the user's score-annotated crop sets, trained on together with the
    crops (the report's IoUs are measured on the crops' photos only).

    The same train_personal as `finetune` mode fast: d_u (+ personal head) and the crop-head
    offsets on cached aligned features. The model's shared weights are untouched; the personal
    state starts from 0 (the population prior). The loss weights and delta_l2 come from
    config.finetune; epochs and learning rates are the fast path's.
    """
    cfg = config.finetune
    device = torch.device(device)
    model.personal.reset()
    model.to(device)
    photos = crop_samples(model, crops, device, sharpness)
    samples = [p.sample for p in photos] + list(scored)
    inputs = cached_head_inputs(model, samples, device)
    with torch.no_grad():
        generic = [model.combine(model.head_features(x, personal=False), personal=False).cpu().numpy()
                   for x in inputs[:len(photos)]]
    train_log = train_personal(model, samples, epochs=epochs, lr=lr, rank_weight=cfg.rank_weight,
                               smooth_l1_weight=cfg.smooth_l1_weight, delta_l2=cfg.delta_l2, seed=config.seed,
                               progress=config.progress, device=device, head_lr=head_lr,
                               offset_scope=cfg.offsets, head_inputs=inputs)
    with torch.no_grad():
        personal = [model.combine(model.head_features(x)).cpu().numpy() for x in inputs[:len(photos)]]
    model.eval()
    return CropsReport(len(photos), len(crops),
                       float(np.mean([top1_iou(s, p) for s, p in zip(generic, photos)])),
                       float(np.mean([top1_iou(s, p) for s, p in zip(personal, photos)])), train_log)
