"""Subjects a crop must keep: detected faces (as whole heads) and, without faces, the salient object.

The crop scorer learns taste from crop scores, not anatomy; on real photos its top crop may
cut a head in half. The Cropper therefore applies a documented rule on top of the scores
(docs/cropping.md, "Keeping subjects"):

- Faces come from OpenCV's Haar frontal-face cascade (the XML ships in the opencv-python wheel,
  `cv2.data.haarcascades`; OpenCV 5 moved cascades out of the main wheel, hence opencv < 5 in
  pyproject.toml). A face box is grown into a head box
  (HEAD_GROWTH: hair, a cap, the chin) because a crop through the forehead cuts the head.
  Candidates that cut a head are dropped while any candidate keeps every head.
- Without a face, a colour-contrast saliency map with a centre prior gives one subject box
  (the bounding box of the strongest salient region); candidates are penalized by the share
  of it they cut, so the model's taste still decides among crops that keep it.

Faces are looked for on a copy with DETECT_SIDE pixels on the short side (a few ms on a CPU).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

DETECT_SIDE = 128
"""Faces are looked for on a copy with this short side: faces of about 16% of the short side or more
are found, in 1-6 ms on a CPU (scikit-image's LBP cascade, used before: 10-25 ms; benchmarks/RESULTS.md)."""
FACE_SCALE_STEP = 1.2
"""The cascade's scale step: 1.25 loses the astronaut's face at 128 px, 1.1 costs twice the time."""
FACE_NEIGHBOURS = 3
"""Overlapping detections a face needs (OpenCV's minNeighbors)."""
FACE_MIN = 20
"""Smallest face looked for, in pixels of the DETECT_SIDE copy (the cascade's window is 24)."""
SALIENCY_SIDE = 64
"""The saliency map is computed on a copy with this short side (about a millisecond)."""
MIN_CONCENTRATION = 0.35
"""The strongest salient region must hold this share of the salient mass to count as a subject
(measured: 0.41-1.0 on the real test photos, 0.22-0.26 on noise)."""
CENTRE_SIGMA = 0.3
"""Width of the saliency centre prior, as a fraction of the frame."""
HEAD_GROWTH = (0.25, 0.5, 0.25, 0.05)
"""A face box grows by these fractions of its size: left, top, right, bottom (hair and caps go up)."""
FACE_KEEP = 0.6
"""Faces smaller than this fraction of the largest face are ignored (cascade false positives)."""
SALIENT_QUANTILE = 0.9
"""Saliency above this quantile marks the subject's pixels."""
SALIENT_GROUP = 0.3
"""Salient regions holding at least this share of the strongest region's mass join it in the subject
box: an object often splits into several salient parts (a cup's rim and its handle; a head and a coat).
Measured on the six real test photos with the Lite0 free-set model: 21 -> 22 of 24 cases kept (coffee
at 4:5 now keeps the whole cup); 0.15 / 0.3 / 0.5 gave the same 22."""
SUBJECT_PENALTY = 4.0
"""Penalty per share of the salient box cut, in units of the spread (std) of the crop scores."""
MASS_PENALTY = 8.0
"""Penalty per share of the saliency mass left out (relative to the candidate that keeps the most)."""
MASS_KEEP = 0.85
"""Crops keeping this share of the most saliency mass any candidate keeps are not penalized for it.
Measured on the real photos (benchmarks/RESULTS.md): with the trained demo model 0.85 and 1.0
keep the subject equally often (22 of 24), but only at 0.85 does a tight taste learned from 5
crops move the free crops of photos without faces; with untrained models 1.0 keeps more
subjects (20-21 of 24 against 14-17) by favouring large crops."""
EDGE_PENALTY = 2.0
"""Penalty per unit of saliency a crop edge runs through (the mean of the map along its most salient
inner edge), in score spreads: an edge across the subject cuts it even when most of it is kept.
Chosen on the six real test photos (subject kept 21 -> 22 of 24 cases; 1 / 2 / 4 / 8 gave 21 / 22 /
22 / 22); on two held-out photos (skimage clock and stereo_motorcycle) it changed nothing (5 of 6)."""
KEEP_FRACTION = 0.97
"""A candidate keeps a head when it holds at least this share of the head box."""


@dataclass
class Subjects:
    """What a photo's crops must keep, in original pixels."""

    heads: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # (F, 4) faces grown to heads
    salient: Optional[np.ndarray] = None  # (4,) the salient region, when no face was found
    saliency: Optional[np.ndarray] = None  # the small saliency map behind it (rows x cols, [0, 1])

    def as_dict(self) -> dict:
        return {"heads": [[round(float(v), 1) for v in b] for b in self.heads],
                "salient": None if self.salient is None else [round(float(v), 1) for v in self.salient]}


@functools.lru_cache(maxsize=1)
def _cascade() -> "cv2.CascadeClassifier":
    path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise RuntimeError(f"{path}: OpenCV could not load its face cascade (is opencv-python-headless < 5 installed?)")
    return cascade


def _shrunk(image: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """The image with its short side at most `side` (area averaging), and the scale applied (<= 1)."""
    h, w = image.shape[:2]
    scale = min(1.0, side / min(h, w))
    if scale < 1.0:
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return image, scale


def _small_gray(image: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    return _shrunk(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image, side)


def detect_faces(image: np.ndarray, side: int = DETECT_SIDE) -> np.ndarray:
    """Face boxes (F, 4) in original pixels, largest first; small stray detections dropped."""
    gray, scale = _small_gray(image, side)
    found = _cascade().detectMultiScale(gray, scaleFactor=FACE_SCALE_STEP, minNeighbors=FACE_NEIGHBOURS,
                                        minSize=(FACE_MIN, FACE_MIN))
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in found], dtype=np.float32).reshape(-1, 4) / scale
    if not len(boxes):
        return boxes
    sizes = boxes[:, 2] - boxes[:, 0]
    boxes = boxes[np.argsort(-sizes)]
    return boxes[(boxes[:, 2] - boxes[:, 0]) >= FACE_KEEP * sizes.max()]


def heads_from_faces(faces: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Face boxes grown by HEAD_GROWTH and clipped to the (height, width) image."""
    faces = np.asarray(faces, dtype=np.float32).reshape(-1, 4)
    w = faces[:, 2] - faces[:, 0]
    h = faces[:, 3] - faces[:, 1]
    left, top, right, bottom = HEAD_GROWTH
    out = np.stack([faces[:, 0] - left * w, faces[:, 1] - top * h, faces[:, 2] + right * w,
                    faces[:, 3] + bottom * h], axis=1)
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, size[1])
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, size[0])
    return out


def saliency_map(image: np.ndarray, side: int = SALIENCY_SIDE) -> np.ndarray:
    """Colour-contrast saliency with a centre prior on a small copy, values in [0, 1].

    Each pixel's distance in Lab from the photo's mean colour (after a light blur, as in
    Achanta et al. 2009's frequency-tuned saliency), weighted by a Gaussian centred on the
    frame (photographers rarely put the subject on the very edge).
    """
    h, w = image.shape[:2]
    scale = side / min(h, w)
    small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB).astype(np.float32)
    sal = np.linalg.norm(cv2.GaussianBlur(lab, (0, 0), 1.5) - lab.reshape(-1, 3).mean(axis=0), axis=2)
    sal = sal * _centre_prior(*sal.shape)
    return (sal - sal.min()) / max(float(sal.max() - sal.min()), 1e-12)


@functools.lru_cache(maxsize=16)
def _centre_prior(rows: int, cols: int) -> np.ndarray:
    yy, xx = np.mgrid[0:rows, 0:cols]
    return np.exp(-((xx / cols - 0.5) ** 2 + (yy / rows - 0.5) ** 2) / (2 * CENTRE_SIGMA ** 2))


def _quantile(values: np.ndarray, q: float) -> float:
    """np.quantile(values, q) (linear interpolation) by partial sorting: same value, less work."""
    flat = values.ravel()
    k = q * (flat.size - 1)
    lo, hi = int(np.floor(k)), int(np.ceil(k))
    part = np.partition(flat, (lo, hi))
    return float(part[lo] + (part[hi] - part[lo]) * (k - lo))


def salient_box(image: np.ndarray, side: int = SALIENCY_SIDE, sal: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
    """Bounding box (original pixels) of the strongest connected salient region and of those
    holding SALIENT_GROUP of its mass, or None."""
    sal = saliency_map(image, side) if sal is None else sal
    mask = (sal >= _quantile(sal, SALIENT_QUANTILE)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return None
    strength = np.bincount(labels.ravel(), weights=sal.ravel(), minlength=count)[1:]  # salient mass per region
    if strength.max() < MIN_CONCENTRATION * strength.sum():
        return None  # saliency scattered all over (texture, noise): no subject to keep
    chosen = stats[1:][strength >= SALIENT_GROUP * strength.max()]  # (x, y, w, h, area) of each region kept
    x1, y1 = chosen[:, 0].min(), chosen[:, 1].min()
    x2, y2 = (chosen[:, 0] + chosen[:, 2]).max(), (chosen[:, 1] + chosen[:, 3]).max()
    sy, sx = image.shape[0] / sal.shape[0], image.shape[1] / sal.shape[1]
    return np.array([x1 * sx, y1 * sy, x2 * sx, y2 * sy], dtype=np.float32)


def working_copy(image: np.ndarray, side: int = DETECT_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """The photo shrunk to `side` pixels on its short side (unchanged when smaller) and the
    (x, y, x, y) factors from its pixels back to the photo's. Both detectors start from this copy:
    one pass over a large photo instead of one per detector (a 12 MP photo costs tens of ms each)."""
    small, _ = _shrunk(image, side)
    fx, fy = image.shape[1] / small.shape[1], image.shape[0] / small.shape[0]
    return small, np.array([fx, fy, fx, fy], np.float32)


def find_subjects(image: np.ndarray, faces: bool = True, shrunk: Optional[np.ndarray] = None) -> Subjects:
    """Heads when the photo has faces (looked for only when `faces`), else its salient region;
    boxes in the photo's pixels. `shrunk`: the same photo already resized (the Cropper's network
    input), used when it is at least DETECT_SIDE on its short side."""
    source = shrunk if shrunk is not None and DETECT_SIDE <= min(shrunk.shape[:2]) < min(image.shape[:2]) else image
    if faces:
        small, back = working_copy(source)
        back = back * np.array([image.shape[1] / source.shape[1], image.shape[0] / source.shape[0]] * 2, np.float32)
        found = detect_faces(small) * back
        if len(found):
            return Subjects(heads=heads_from_faces(found, image.shape[:2]))
    else:
        small = source  # saliency alone shrinks it to SALIENCY_SIDE itself
    sal = saliency_map(small)
    box = salient_box(image, sal=sal)
    return Subjects(salient=box, saliency=None if box is None else sal)


def kept_fraction(boxes: np.ndarray, subject: np.ndarray) -> np.ndarray:
    """Share of the `subject` box (4,) inside each candidate (M, 4)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(subject, dtype=np.float64)
    iw = np.clip(np.minimum(boxes[:, 2], s[2]) - np.maximum(boxes[:, 0], s[0]), 0, None)
    ih = np.clip(np.minimum(boxes[:, 3], s[3]) - np.maximum(boxes[:, 1], s[1]), 0, None)
    return iw * ih / max((s[2] - s[0]) * (s[3] - s[1]), 1e-9)


def _cell_edges(boxes: np.ndarray, shape: tuple[int, int], size: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Each box's edges (x1, x2, y1, y2) on a (rows, cols) map of a (height, width) photo: cell
    boundaries, rounded, in 0..cols and 0..rows."""
    rows, cols = shape
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x1 = np.clip(np.round(b[:, 0] * cols / size[1]), 0, cols).astype(int)
    x2 = np.clip(np.round(b[:, 2] * cols / size[1]), 0, cols).astype(int)
    y1 = np.clip(np.round(b[:, 1] * rows / size[0]), 0, rows).astype(int)
    y2 = np.clip(np.round(b[:, 3] * rows / size[0]), 0, rows).astype(int)
    return x1, x2, y1, y2


def saliency_kept(boxes: np.ndarray, saliency: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Share of the photo's saliency mass inside each candidate (M,), from an integral image."""
    rows, cols = saliency.shape
    table = np.zeros((rows + 1, cols + 1))
    np.cumsum(saliency.cumsum(0), 1, out=table[1:, 1:])
    x1, x2, y1, y2 = _cell_edges(boxes, saliency.shape, size)
    mass = table[y2, x2] - table[y1, x2] - table[y2, x1] + table[y1, x1]
    return mass / max(float(table[-1, -1]), 1e-12)


def edge_saliency(boxes: np.ndarray, saliency: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Mean saliency along each candidate's most salient edge inside the photo (M,); an edge on the
    photo's own border cuts nothing and counts 0."""
    rows, cols = saliency.shape
    along_rows = np.zeros((rows, cols + 1))  # [r, c]: sum of row r over columns < c
    np.cumsum(saliency, 1, out=along_rows[:, 1:])
    along_cols = np.zeros((rows + 1, cols))  # [r, c]: sum of column c over rows < r
    np.cumsum(saliency, 0, out=along_cols[1:])
    x1, x2, y1, y2 = _cell_edges(boxes, saliency.shape, size)
    c1, r1 = np.minimum(x1, cols - 1), np.minimum(y1, rows - 1)  # first and last cell inside each box
    c2, r2 = np.clip(x2 - 1, c1, cols - 1), np.clip(y2 - 1, r1, rows - 1)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    width, height = (c2 - c1 + 1).astype(np.float64), (r2 - r1 + 1).astype(np.float64)
    top = (along_rows[r1, c2 + 1] - along_rows[r1, c1]) / width
    bottom = (along_rows[r2, c2 + 1] - along_rows[r2, c1]) / width
    left = (along_cols[r2 + 1, c1] - along_cols[r1, c1]) / height
    right = (along_cols[r2 + 1, c2] - along_cols[r1, c2]) / height
    inner = [b[:, 1] > 0.5, b[:, 3] < size[0] - 0.5, b[:, 0] > 0.5, b[:, 2] < size[1] - 0.5]
    return np.max([np.where(m, e, 0.0) for m, e in zip(inner, (top, bottom, left, right))], axis=0)


def apply_subject_rule(boxes: np.ndarray, scores: np.ndarray, subjects: Subjects,
                       size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """Scores adjusted so crops keep the subjects: a candidate that cuts a head gets -inf when
    another keeps it (a head taller than the crop can be: those keeping the most of it stay,
    centred on it);
    the salient box costs SUBJECT_PENALTY score spreads per share of it cut, and keeping less
    than MASS_KEEP of the saliency mass MASS_PENALTY spreads per share missing, and an edge through
    the salient pixels EDGE_PENALTY spreads per unit of saliency along it (both need the photo's
    (height, width) `size`)."""
    scores = np.asarray(scores, dtype=np.float64).copy()
    spread = max(float(scores.std()), 1e-6)
    if len(subjects.heads):
        kept = np.stack([kept_fraction(boxes, h) for h in subjects.heads]).min(axis=0)
        if kept.max() >= KEEP_FRACTION:
            return np.where(kept >= KEEP_FRACTION, scores, -np.inf)
        # no crop holds the whole head (a landscape crop of a portrait): keep the most of it, centred on it
        head = subjects.heads[0]
        off = np.abs((boxes[:, 1] + boxes[:, 3]) - (head[1] + head[3])) / max(float(head[3] - head[1]), 1e-9)
        off += np.abs((boxes[:, 0] + boxes[:, 2]) - (head[0] + head[2])) / max(float(head[2] - head[0]), 1e-9)
        return np.where(kept >= float(kept.max()) - 0.02, scores - 4.0 * spread * off, -np.inf)
    if subjects.salient is not None:
        scores -= SUBJECT_PENALTY * spread * (1.0 - kept_fraction(boxes, subjects.salient))
    if subjects.saliency is not None and size is not None:
        mass = saliency_kept(boxes, subjects.saliency, size)
        scores -= MASS_PENALTY * spread * np.clip(MASS_KEEP - mass / max(float(mass.max()), 1e-12), 0.0, None)
        scores -= EDGE_PENALTY * spread * edge_saliency(boxes, subjects.saliency, size)
    return scores
