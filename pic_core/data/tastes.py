"""Synthetic users' cropping tastes: deterministic scores from scene facts and crop boxes.

Every user is one point of a shared continuous parameter space (`PARAMS`): a family
prototype (`FAMILIES`) plus per-user jitter. A user's score of a crop is
    score = 1 + 4 * exp(-(objective + personal penalties + noise) / TEMPERATURE)
where the objective part (do not cut subjects in half, do not lose the main subject,
do not crop too small) is the same for everyone and gives the population a real average
taste, the personal penalties measure the distance of the crop's composition from the
user's targets (subject placement and scale, people kept whole or cut away, horizon
height, crop aspect), and the noise is a hash of (user, image, box), so the same call
always gives the same score. Everything is vectorized over users x crops.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .records import format_box
from .scenes import Scene

PARAMS = ("place_w", "place_dx", "place_v", "scale_w", "scale_t", "people_w",
          "horizon_w", "horizon_t", "aspect_w", "aspect_t", "noise")
"""The taste vector, in this order:
place_w/place_dx/place_v  weight; target |x - 1/2| of the main subject in the crop (0 = centred,
                          1/6 = on a third line); target y of its centre (fraction of crop height)
scale_w/scale_t           weight; target subject size = max(subject h / crop h, subject w / crop w)
people_w                  > 0: penalty for cutting people (head cuts count double);
                          < 0: penalty for people left in the frame (keeps scenery, cuts people)
horizon_w/horizon_t       weight; target height of the horizon in the crop (0 = top, 1 = bottom)
aspect_w/aspect_t         weight; target log(width / height) of the crop
noise                     sigma of the per-crop noise added to the penalty
"""

FAMILIES: dict[str, dict[str, float]] = {
    # subject dead centre, portrait-ish, snug, never cut a person
    "centred": dict(place_w=2.0, place_dx=0.0, place_v=0.5, scale_w=1.2, scale_t=0.62, people_w=2.5,
                    horizon_w=0.4, horizon_t=0.5, aspect_w=1.0, aspect_t=math.log(4 / 5), noise=0.08),
    # subject on a third line, horizon on the lower third (sky), 3:2 landscape
    "thirds": dict(place_w=2.0, place_dx=1 / 6, place_v=0.45, scale_w=0.8, scale_t=0.45, people_w=1.5,
                   horizon_w=1.5, horizon_t=2 / 3, aspect_w=0.8, aspect_t=math.log(3 / 2), noise=0.08),
    # the paper's "User 1": wide and loose, horizon high (foreground); does not mind cutting people
    "scenery": dict(place_w=0.3, place_dx=0.1, place_v=0.6, scale_w=1.5, scale_t=0.2, people_w=-1.0,
                    horizon_w=1.2, horizon_t=1 / 3, aspect_w=1.2, aspect_t=math.log(16 / 9), noise=0.08),
    # fill the frame with the subject, square
    "closeup": dict(place_w=1.2, place_dx=0.0, place_v=0.42, scale_w=2.0, scale_t=0.9, people_w=1.0,
                    horizon_w=0.0, horizon_t=0.5, aspect_w=1.0, aspect_t=0.0, noise=0.08),
    # lots of sky: horizon low in the frame, subject small and off-centre
    "skyline": dict(place_w=1.0, place_dx=1 / 6, place_v=0.6, scale_w=0.6, scale_t=0.35, people_w=1.0,
                    horizon_w=2.0, horizon_t=0.75, aspect_w=0.6, aspect_t=math.log(4 / 3), noise=0.08),
    # negative space: small subject far off-centre, level horizon through the middle, square-ish
    "minimal": dict(place_w=1.5, place_dx=0.22, place_v=0.55, scale_w=1.0, scale_t=0.3, people_w=1.0,
                    horizon_w=1.2, horizon_t=0.5, aspect_w=1.0, aspect_t=0.0, noise=0.08),
}

JITTER = dict(place_w=("mul", 0.2), place_dx=("add", 0.02), place_v=("add", 0.03), scale_w=("mul", 0.2),
              scale_t=("mul", 0.1), people_w=("mul", 0.2), horizon_w=("mul", 0.2), horizon_t=("add", 0.03),
              aspect_w=("mul", 0.2), aspect_t=("add", 0.08), noise=("mul", 0.2))
"""Per-user spread around the family prototype: multiplicative (log-normal) or additive (normal) sigma."""
LIMITS = dict(place_dx=(0.0, 0.3), place_v=(0.2, 0.8), horizon_t=(0.1, 0.9))

TEMPERATURE = 6.0
OBJECTIVE = dict(partial=2.0, main_lost=3.0, small=1.5)
"""Weights of the objective part shared by every user."""
SMALL_AREA = 0.6  # crops below this fraction of the image start to be penalized


@dataclass(frozen=True)
class Taste:
    """One synthetic user: family, parameter vector (in PARAMS order) and noise seed."""

    user_id: str
    family: str
    params: tuple[float, ...]
    seed: int

    def to_json(self) -> dict:
        return {"family": self.family, "seed": self.seed,
                "params": {k: round(v, 6) for k, v in zip(PARAMS, self.params)}}

    @classmethod
    def from_json(cls, user_id: str, data: dict) -> "Taste":
        missing = [k for k in PARAMS if k not in data["params"]]
        if missing:
            raise ValueError(f"user {user_id}: taste parameters {missing} missing")
        return cls(user_id, data["family"], tuple(float(data["params"][k]) for k in PARAMS), int(data["seed"]))

    def score(self, scene: Scene, name: str, boxes: np.ndarray) -> np.ndarray:
        """This user's scores of `boxes` on the image `name` (the oracle), (M,)."""
        return score_matrix([self], scene, name, boxes)[0]


def draw_taste(user_id: str, family: str, rng: np.random.Generator) -> Taste:
    """A user of `family`: the prototype with every parameter jittered (rounded to 6 decimals)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown taste family {family!r}; known: {sorted(FAMILIES)}")
    proto = FAMILIES[family]
    values = []
    for key in PARAMS:
        how, sigma = JITTER[key]
        value = proto[key] * math.exp(sigma * rng.standard_normal()) if how == "mul" else proto[key] + sigma * rng.standard_normal()
        low, high = LIMITS.get(key, (-math.inf, math.inf))
        values.append(round(min(max(value, low), high), 6))
    return Taste(user_id, family, tuple(values), int(rng.integers(2**31 - 1)))


# ---------------------------------------------------------------- crop facts

def _rho(e: np.ndarray) -> np.ndarray:
    """Pseudo-Huber: square for small misses, linear for large ones, so a target the
    candidates cannot reach still ranks them by how close they come, without one
    far-off term swamping the others."""
    return np.sqrt(1.0 + e * e) - 1.0


def _visible(boxes: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """(S, M): the fraction of each part box (S, 4) inside each crop (M, 4)."""
    if len(parts) == 0:
        return np.zeros((0, len(boxes)))
    iw = np.clip(np.minimum(parts[:, None, 2], boxes[None, :, 2]) - np.maximum(parts[:, None, 0], boxes[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(parts[:, None, 3], boxes[None, :, 3]) - np.maximum(parts[:, None, 1], boxes[None, :, 1]), 0, None)
    area = (parts[:, 2] - parts[:, 0]) * (parts[:, 3] - parts[:, 1])
    return iw * ih / np.maximum(area, 1e-9)[:, None]


@dataclass
class CropFacts:
    """What the taste functions read of each crop (all (M,) float64)."""

    place_x: np.ndarray  # |x - 1/2| of the main subject centre, in crop widths
    place_y: np.ndarray  # y of the main subject centre, in crop heights
    scale: np.ndarray  # how much of the crop the main subject fills
    person_damage: np.ndarray  # mean over people of (body cut + head cut) / 2, 0 without people
    person_visible: np.ndarray  # mean visible fraction of people, 0 without people
    horizon: np.ndarray  # horizon height in the crop, 0 = top edge, 1 = bottom edge
    log_aspect: np.ndarray
    objective: np.ndarray  # the shared objective penalty


def crop_facts(scene: Scene, boxes: np.ndarray) -> CropFacts:
    """Composition facts of each crop of `scene` (boxes in image pixels)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    cw = boxes[:, 2] - boxes[:, 0]
    ch = boxes[:, 3] - boxes[:, 1]
    main = np.asarray(scene.subjects[scene.main].box, dtype=np.float64)
    mw, mh = main[2] - main[0], main[3] - main[1]
    place_x = np.abs(((main[0] + main[2]) / 2 - boxes[:, 0]) / cw - 0.5)
    place_y = ((main[1] + main[3]) / 2 - boxes[:, 1]) / ch
    scale = np.maximum(mh / ch, mw / cw)
    all_boxes = np.asarray([s.box for s in scene.subjects], dtype=np.float64).reshape(-1, 4)
    vis = _visible(boxes, all_boxes)
    people = [s for s in scene.subjects if s.kind == "person"]
    if people:
        body = _visible(boxes, np.asarray([p.box for p in people], dtype=np.float64))
        head = _visible(boxes, np.asarray([p.head for p in people], dtype=np.float64))
        damage = ((1 - body) + (1 - head)).mean(axis=0) / 2
        visible = body.mean(axis=0)
    else:
        damage = visible = np.zeros(len(boxes))
    horizon = (scene.horizon_at((boxes[:, 0] + boxes[:, 2]) / 2) - boxes[:, 1]) / ch
    weight = np.full(len(scene.subjects), 0.5)
    weight[scene.main] = 1.0
    partial = (weight[:, None] * 4 * vis * (1 - vis)).sum(axis=0)
    area = cw * ch / (scene.width * scene.height)
    objective = (OBJECTIVE["partial"] * partial + OBJECTIVE["main_lost"] * (1 - vis[scene.main])
                 + OBJECTIVE["small"] * _rho(np.clip(SMALL_AREA - area, 0, None) / 0.1))
    return CropFacts(place_x, place_y, scale, damage, visible, horizon, np.log(cw / ch), objective)


# ---------------------------------------------------------------- scores

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(x: np.ndarray) -> np.ndarray:
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def crop_noise(seeds: Sequence[int], name: str, boxes: np.ndarray) -> np.ndarray:
    """(U, M) standard normals, a pure function of (user seed, image name, box as written in CSVs)."""
    keys = np.array([zlib.crc32(format_box(b).encode()) for b in np.asarray(boxes).reshape(-1, 4)], dtype=np.uint64)
    image = np.uint64(zlib.crc32(name.encode()))
    user = np.asarray(seeds, dtype=np.uint64)[:, None]
    base = _splitmix(_splitmix(_splitmix(user) ^ image) ^ keys[None, :])
    u1 = ((_splitmix(base) >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
    u2 = ((_splitmix(base ^ _GOLDEN) >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def penalties(params: np.ndarray, facts: CropFacts) -> np.ndarray:
    """(U, M) noise-free personal + objective penalties for users with params (U, len(PARAMS))."""
    p = {k: np.asarray(params, dtype=np.float64)[:, i, None] for i, k in enumerate(PARAMS)}
    place = _rho((facts.place_x - p["place_dx"]) / 0.07) + 0.5 * _rho((facts.place_y - p["place_v"]) / 0.1)
    scale = _rho(np.log(facts.scale / p["scale_t"]) / 0.15)
    people = np.where(p["people_w"] >= 0, p["people_w"] * facts.person_damage, -p["people_w"] * facts.person_visible)
    horizon = _rho((facts.horizon - p["horizon_t"]) / 0.07)
    aspect = _rho((facts.log_aspect - p["aspect_t"]) / 0.15)
    return (p["place_w"] * place + p["scale_w"] * scale + people + p["horizon_w"] * horizon
            + p["aspect_w"] * aspect + facts.objective)


def to_score(penalty: np.ndarray) -> np.ndarray:
    """Penalty -> score on a 1..5 scale (noise can push a perfect crop a little above 5).

    Monotone, so ranks are the penalties' ranks; no clipping, so no artificial ties.
    """
    return 1.0 + 4.0 * np.exp(-penalty / TEMPERATURE)


def score_matrix(tastes: Sequence[Taste], scene: Scene, name: str, boxes: np.ndarray) -> np.ndarray:
    """(U, M) scores of every user in `tastes` for every crop in `boxes` of image `name`."""
    params = np.asarray([t.params for t in tastes], dtype=np.float64).reshape(len(tastes), len(PARAMS))
    noise = params[:, PARAMS.index("noise"), None] * crop_noise([t.seed for t in tastes], name, boxes)
    return to_score(penalties(params, crop_facts(scene, boxes)) + noise)
