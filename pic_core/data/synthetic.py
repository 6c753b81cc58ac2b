"""A synthetic population of users with different cropping tastes, written as a dataset.

There is no CPC/GAICD here, so fedpic simulates its users: each owns procedurally
rendered photographs (scenes.py) and scores every grid-anchor candidate crop of them with
a deterministic taste function (tastes.py). The output is a dataset directory (DESIGN.md,
"Data formats"):

    images/<name>.jpg     the photographs
    users/<user>.csv      name,bbox,score,split  (the user's own images; prior | train | test)
    generic.csv           name,bbox,score        (mean of every user's scores, every image)
    scenes.json           scene facts per image (size, horizon, subjects, main subject)
    users.json            each user's family, parameter vector, noise seed and images per split
    population.json       seed, counts, family names and the divergence statistics

The same arguments give byte-identical files. The command is `fedpic synth` (fedpic/commands/data.py).
"""
from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from ..atomic import atomic_write_bytes
from ..candidates import CANDIDATE_SETS, candidate_set
from .records import SPLITS, DataError, format_box
from .user_csv import read_user_csv
from .scenes import Scene, make_scene, render_scene
from .tastes import FAMILIES, Taste, draw_taste, score_matrix

GENERATOR_VERSION = 1
DEFAULT_USERS = 40
DEFAULT_IMAGES = 32
SPLIT_WEIGHTS = {"prior": 12, "train": 10, "test": 10}
"""Default proportions prior:train:test of --images-per-user (32 -> 12/10/10)."""
OUR_FILES = ("images", "users", "generic.csv", "scenes.json", "users.json", "population.json")
# seed streams (SeedSequence entropy [seed, STREAM, ...]) keep users, images and probes independent
_USERS, _OWNED, _SHARED, _PROBE = 1, 2, 3, 4


@dataclass(frozen=True)
class PopulationSpec:
    """What to generate; prior/train/test are images per user in each split."""

    users: int = DEFAULT_USERS
    prior: int = 12
    train: int = 10
    test: int = 10
    seed: int = 0
    shared: bool = False  # one image pool scored by every user instead of own photos
    probe: int = 100  # probe scenes (facts only) for the disagreement statistics
    quality: int = 90
    candidates: str = "grid"  # the scored candidates: grid (GAIC anchors) | free (coarse free set)

    def __post_init__(self) -> None:
        if self.candidates not in CANDIDATE_SETS:
            raise ValueError(f"candidates must be one of {', '.join(CANDIDATE_SETS)}, got {self.candidates!r}")
        if self.users < 1:
            raise ValueError(f"users must be >= 1, got {self.users}")
        for split in SPLITS:
            if getattr(self, split) < 0:
                raise ValueError(f"{split} images must be >= 0, got {getattr(self, split)}")
        if self.prior + self.train + self.test < 1:
            raise ValueError("each user needs at least one image")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {self.quality}")
        if self.probe < 0:
            raise ValueError(f"probe images must be >= 0, got {self.probe}")

    @property
    def per_user(self) -> int:
        return self.prior + self.train + self.test


def split_counts(images: int, prior: Optional[int] = None, train: Optional[int] = None,
                 test: Optional[int] = None) -> tuple[int, int, int]:
    """Images per split: explicit counts win, the rest of `images` goes to the other splits
    in the proportions of SPLIT_WEIGHTS (largest remainder, ties to prior, then train)."""
    given = {"prior": prior, "train": train, "test": test}
    for name, value in given.items():
        if value is not None and value < 0:
            raise ValueError(f"--{name}-images must be >= 0, got {value}")
    open_splits = [s for s in SPLITS if given[s] is None]
    left = images - sum(v for v in given.values() if v is not None)
    if open_splits and left < 0:
        raise ValueError(f"--images-per-user {images} is less than the explicit split counts")
    if open_splits:
        total = sum(SPLIT_WEIGHTS[s] for s in open_splits)
        exact = {s: left * SPLIT_WEIGHTS[s] / total for s in open_splits}
        counts = {s: int(math.floor(exact[s])) for s in open_splits}
        for s in sorted(open_splits, key=lambda s: -(exact[s] - counts[s]))[:left - sum(counts.values())]:
            counts[s] += 1
        given.update(counts)
    return given["prior"], given["train"], given["test"]


def candidate_boxes(height: int, width: int, kind: str = "grid") -> np.ndarray:
    """The candidates of an image, (M, 4) float64, exactly as the CSVs spell them.

    `grid`: GAIC's anchors on the network input size mapped back to original pixels;
    `free`: the coarse free set (pic_core/candidates.py: smaller and off-centre crops of the
    usual photo ratios). Rounded the way format_box writes them, so a box read back from a
    CSV is the same float and scores computed from it match the file exactly.
    """
    boxes = candidate_set(height, width, kind, density="coarse")
    return np.asarray([json.loads(format_box(b)) for b in boxes], dtype=np.float64).reshape(-1, 4)


def make_users(count: int, seed: int) -> list[Taste]:
    """`count` users, families assigned round-robin so every family is (nearly) equally big."""
    names = list(FAMILIES)
    width = max(3, len(str(count - 1)))
    return [draw_taste(f"u{i:0{width}d}", names[i % len(names)], np.random.default_rng([seed, _USERS, i]))
            for i in range(count)]


@dataclass
class ImagePlan:
    """One photograph to render and who scores it in which split."""

    name: str
    scene: Scene
    owners: list[int]  # indices of the users whose CSV gets this image
    split: str


def plan_images(spec: PopulationSpec) -> list[ImagePlan]:
    """Image names, scenes and splits; each scene has its own seed stream, so the plan of one
    user does not depend on how many other users there are."""
    order = [s for s in SPLITS for _ in range(getattr(spec, s))]
    digits = max(3, len(str(spec.per_user - 1)))
    if spec.shared:
        everyone = list(range(spec.users))
        return [ImagePlan(f"shared_{j:0{digits}d}.jpg", make_scene(np.random.default_rng([spec.seed, _SHARED, j])),
                          everyone, split) for j, split in enumerate(order)]
    width = max(3, len(str(spec.users - 1)))
    return [ImagePlan(f"u{i:0{width}d}_{j:0{digits}d}.jpg",
                      make_scene(np.random.default_rng([spec.seed, _OWNED, i, j])), [i], split)
            for i in range(spec.users) for j, split in enumerate(order)]


def probe_scenes(seed: int, count: int) -> list[tuple[str, Scene]]:
    """Scene facts (never rendered) that every user scores for the disagreement statistics."""
    return [(f"probe_{j:04d}", make_scene(np.random.default_rng([seed, _PROBE, j]))) for j in range(count)]


# ---------------------------------------------------------------- files

def _csv_bytes(header: Sequence[str], rows: Iterable[Sequence[str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()


def _render_job(job: tuple[dict, str, int]) -> str:
    scene_json, path, quality = job
    ok, data = cv2.imencode(".jpg", render_scene(Scene.from_json(scene_json)), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"{path}: JPEG encoding failed")
    atomic_write_bytes(Path(path), data.tobytes())
    return path


def render_images(plans: Sequence[ImagePlan], folder: Path, quality: int, workers: int, progress: bool) -> None:
    """Render and save every planned image (in `workers` processes; the pixels depend only on the scene)."""
    jobs = [(p.scene.to_json(), str(folder / p.name), quality) for p in plans]
    bar = tqdm(total=len(jobs), desc="render", unit="img", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_render_job, jobs, chunksize=8):
                bar.update()
    else:
        for job in jobs:
            _render_job(job)
            bar.update()
    bar.close()


def _clear(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} is not empty; pass --force to replace a dataset written there")
        for name in OUR_FILES:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()


def generate(spec: PopulationSpec, out: Path | str, workers: int = 2, progress: bool = True,
             force: bool = False) -> dict:
    """Write the population dataset of `spec` into `out`; returns the population.json content."""
    out = Path(out)
    _clear(out, force)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "users").mkdir(exist_ok=True)
    tastes = make_users(spec.users, spec.seed)
    plans = plan_images(spec)
    render_images(plans, out / "images", spec.quality, workers, progress)

    rows: list[list[list[str]]] = [[] for _ in tastes]
    generic_rows: list[list[str]] = []
    split_names: list[dict[str, list[str]]] = [{s: [] for s in SPLITS} for _ in tastes]
    candidates: dict[tuple[int, int], np.ndarray] = {}
    for plan in tqdm(plans, desc="score", unit="img", disable=not progress):
        size = (plan.scene.height, plan.scene.width)
        boxes = candidates.setdefault(size, candidate_boxes(*size, spec.candidates))
        scores = score_matrix(tastes, plan.scene, plan.name, boxes)  # every user, for the population mean
        spelled = [format_box(b) for b in boxes]
        generic_rows.extend([plan.name, b, f"{s:.4f}"] for b, s in zip(spelled, scores.mean(axis=0)))
        for i in plan.owners:
            rows[i].extend([plan.name, b, f"{s:.4f}", plan.split] for b, s in zip(spelled, scores[i]))
            split_names[i][plan.split].append(plan.name)
    for taste, user_rows in zip(tastes, rows):
        atomic_write_bytes(out / "users" / f"{taste.user_id}.csv", _csv_bytes(("name", "bbox", "score", "split"), user_rows))
    atomic_write_bytes(out / "generic.csv", _csv_bytes(("name", "bbox", "score"), generic_rows))
    atomic_write_bytes(out / "scenes.json", _json_bytes({p.name: p.scene.to_json() for p in plans}))
    users = {t.user_id: {**t.to_json(), "images": names} for t, names in zip(tastes, split_names)}
    atomic_write_bytes(out / "users.json", _json_bytes(users))
    population = {"generator_version": GENERATOR_VERSION, "seed": spec.seed, "users": spec.users,
                  "counts": {s: getattr(spec, s) for s in SPLITS}, "shared_images": spec.shared,
                  "images": len(plans), "probe_images": spec.probe, "candidates": spec.candidates, "jpeg_quality": spec.quality,
                  "families": {name: sum(t.family == name for t in tastes) for name in FAMILIES}}
    atomic_write_bytes(out / "population.json", _json_bytes(population))
    population["stats"] = population_stats(out)
    atomic_write_bytes(out / "population.json", _json_bytes(population))
    return population


# ---------------------------------------------------------------- statistics

def _read_scores(path: Path, images: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (boxes, scores) of one dataset CSV, through the project's validating reader."""
    return {c.name: (c.boxes.astype(np.float64), c.scores.astype(np.float64)) for c in read_user_csv(path, images)}


def _load_population(root: Path) -> tuple[dict, list[Taste], dict]:
    try:
        population = json.loads((root / "population.json").read_text())
        users = json.loads((root / "users.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{root}: not a synthetic population ({err})") from None
    tastes = [Taste.from_json(uid, data) for uid, data in sorted(users.items())]
    return population, tastes, users


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Row-wise ranks, centred and scaled to unit norm (Spearman = dot product of these)."""
    ranks = scores.argsort(axis=1).argsort(axis=1).astype(np.float64)
    ranks -= ranks.mean(axis=1, keepdims=True)
    return ranks / np.maximum(np.linalg.norm(ranks, axis=1, keepdims=True), 1e-12)


def probe_stats(tastes: Sequence[Taste], scenes: Sequence[tuple[str, Scene]], kind: str = "grid") -> dict:
    """Disagreement between users on scenes every user scores: 1 - Spearman and top-1
    disagreement, for pairs of the same family and of different families; also how often
    the noise alone moves a user's best crop."""
    n = len(tastes)
    spearman = np.zeros((n, n))
    differ = np.zeros((n, n))
    generic_rho = np.zeros(n)
    noise_kept = np.zeros(n)
    quiet = [Taste(t.user_id, t.family, t.params[:-1] + (0.0,), t.seed) for t in tastes]
    for name, scene in scenes:
        boxes = candidate_boxes(scene.height, scene.width, kind)
        scores = score_matrix(tastes, scene, name, boxes)
        ranks = _ranks(scores)
        spearman += ranks @ ranks.T
        top = scores.argmax(axis=1)
        differ += top[:, None] != top[None, :]
        generic_rho += ranks @ _ranks(scores.mean(axis=0, keepdims=True))[0]
        noise_kept += top == score_matrix(quiet, scene, name, boxes).argmax(axis=1)
    count = max(len(scenes), 1)
    spearman, differ = spearman / count, differ / count
    family = np.array([t.family for t in tastes])
    same = (family[:, None] == family[None, :]) & ~np.eye(n, dtype=bool)
    other = family[:, None] != family[None, :]

    def mean(values: np.ndarray, mask: np.ndarray) -> Optional[float]:
        return round(float(values[mask].mean()), 6) if mask.any() else None

    return {"probe_images": len(scenes),
            "same_family_1_minus_srcc": mean(1 - spearman, same), "different_family_1_minus_srcc": mean(1 - spearman, other),
            "same_family_top1_disagreement": mean(differ, same), "different_family_top1_disagreement": mean(differ, other),
            "user_generic_srcc": round(float(generic_rho.mean() / count), 6),
            "noise_keeps_top1": round(float(noise_kept.mean() / count), 6)}


def agreement_on_test_images(root: Path, users: dict) -> dict:
    """On each user's test images, how often the generic best crop is the user's best crop
    (and lies in the user's top 5), read from the CSV files as written."""
    generic = _read_scores(root / "generic.csv", root / "images")
    hits, top5, per_family = [], [], {}
    for uid, data in sorted(users.items()):
        own = _read_scores(root / "users" / f"{uid}.csv", root / "images")
        for name in data["images"]["test"]:
            if name not in own or name not in generic:
                raise DataError(f"{root}: test image {name} of user {uid} missing from a CSV")
            user_scores = own[name][1]
            best = int(generic[name][1].argmax())
            hit = best == int(user_scores.argmax())
            hits.append(hit)
            top5.append(best in np.argsort(-user_scores, kind="stable")[:5])
            per_family.setdefault(data["family"], []).append(hit)
    if not hits:
        return {"test_pairs": 0, "generic_top1_is_user_top1": None, "generic_top1_in_user_top5": None}
    return {"test_pairs": len(hits), "generic_top1_is_user_top1": round(float(np.mean(hits)), 6),
            "generic_top1_in_user_top5": round(float(np.mean(top5)), 6),
            "generic_top1_is_user_top1_by_family": {f: round(float(np.mean(v)), 6) for f, v in sorted(per_family.items())}}


STATS_USERS = 500
"""Pairwise statistics use at most this many users (evenly spaced): they cost users^2 memory."""


def stats_sample(tastes: Sequence[Taste], limit: int = STATS_USERS) -> list[Taste]:
    """All users, or `limit` of them evenly spaced over the ids (families stay mixed: round-robin)."""
    if len(tastes) <= limit:
        return list(tastes)
    return [tastes[int(i)] for i in np.linspace(0, len(tastes) - 1, limit).round().astype(int)]


def population_stats(root: Path | str) -> dict:
    """Divergence statistics of the dataset at `root` (also stored in its population.json)."""
    root = Path(root)
    population, tastes, users = _load_population(root)
    stats = agreement_on_test_images(root, users)
    sample = stats_sample(tastes)
    scenes = probe_scenes(int(population["seed"]), int(population.get("probe_images", 100)))
    stats.update(probe_stats(sample, scenes, str(population.get("candidates", "grid"))))
    stats["probe_users"] = len(sample)
    return stats
