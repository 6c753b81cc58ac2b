"""Procedural photographs for the synthetic users: scene facts first, pixels second.

A `Scene` holds everything a taste function may look at (image size, horizon line,
subject boxes and kinds, which subject is the main one); `render_scene` turns it into a
photograph where each of those facts is plainly visible (sky/ground contrast at the
horizon, outlined subjects in colours that stand out, people drawn as head + body + legs),
so a CNN can learn from pixels what the taste functions compute from facts.
Everything is drawn from a seeded numpy Generator: the same seed gives the same scene.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import cv2
import numpy as np

ASPECTS = ((4, 3), (3, 2), (16, 9), (1, 1), (3, 4), (2, 3), (4, 5), (5, 4))
"""Image shapes (width:height) a scene may take."""
LONG_SIDE = (384, 512)
"""The long side of a scene, in pixels, is drawn uniformly from this range."""
KINDS = ("person", "tree", "house", "car", "ball")
SKIES = ("day", "sunset", "overcast", "dusk")
GROUNDS = ("grass", "sand", "field", "beach", "meadow")


@dataclass
class Subject:
    """One drawn object; `box` is its full extent [x1, y1, x2, y2] in image pixels."""

    kind: str
    box: list[float]
    head: Optional[list[float]] = None  # people only: the head's box (cutting it is the worst cut)
    colour: tuple[int, int, int] = (0, 0, 0)  # main colour, BGR

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "box": [round(v, 2) for v in self.box]}
        if self.head is not None:
            out["head"] = [round(v, 2) for v in self.head]
        out["colour"] = list(self.colour)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Subject":
        return cls(data["kind"], [float(v) for v in data["box"]],
                   [float(v) for v in data["head"]] if data.get("head") is not None else None,
                   tuple(int(v) for v in data.get("colour", (0, 0, 0))))


@dataclass
class Scene:
    """The facts of one synthetic photograph (what taste functions read)."""

    width: int
    height: int
    horizon: tuple[float, float]  # y of the sky/ground line at x = 0 and at x = width
    sky: str
    ground: str
    subjects: list[Subject] = field(default_factory=list)
    main: int = 0  # index of the main subject
    seed: int = 0  # pixel seed: textures and grain

    def horizon_at(self, x: np.ndarray) -> np.ndarray:
        """y of the horizon at columns x."""
        return self.horizon[0] + (self.horizon[1] - self.horizon[0]) * np.asarray(x, dtype=np.float64) / self.width

    def to_json(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height,
                "horizon": [round(self.horizon[0], 2), round(self.horizon[1], 2)],
                "sky": self.sky, "ground": self.ground, "main": self.main, "seed": self.seed,
                "subjects": [s.to_json() for s in self.subjects]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Scene":
        return cls(int(data["width"]), int(data["height"]), (float(data["horizon"][0]), float(data["horizon"][1])),
                   data["sky"], data["ground"], [Subject.from_json(s) for s in data["subjects"]],
                   int(data["main"]), int(data.get("seed", 0)))


# ---------------------------------------------------------------- scene facts

SHIRTS = ((40, 40, 220), (200, 60, 30), (30, 200, 240), (160, 40, 160), (20, 130, 250),
          (240, 240, 240), (200, 200, 30), (60, 20, 140), (90, 200, 60))
SKIN = ((150, 180, 225), (110, 150, 200), (70, 105, 150), (45, 70, 105), (170, 200, 235))
CARS = ((30, 30, 210), (210, 90, 20), (20, 210, 240), (240, 240, 240), (40, 40, 40), (150, 30, 150))
BALLS = ((0, 140, 255), (30, 30, 230), (230, 230, 230), (220, 120, 20), (0, 220, 255))
WALLS = ((170, 220, 245), (120, 160, 210), (230, 230, 230), (90, 110, 200), (200, 190, 150))


def _size(rng: np.random.Generator) -> tuple[int, int]:
    aw, ah = ASPECTS[int(rng.integers(len(ASPECTS)))]
    long_side = int(rng.integers(LONG_SIDE[0], LONG_SIDE[1] + 1))
    if aw >= ah:
        return long_side, int(round(long_side * ah / aw))
    return int(round(long_side * aw / ah)), long_side


def _subject_box(kind: str, rng: np.random.Generator, width: int, height: int, horizon_y: float,
                 scale: float, edge: bool = False) -> tuple[list[float], Optional[list[float]]]:
    """A box for a subject of `kind` standing on the ground; `scale` shrinks secondary subjects,
    `edge` puts it near a side border."""
    if kind == "person":
        h = height * rng.uniform(0.32, 0.66) * scale
        w = h * rng.uniform(0.30, 0.40)
    elif kind == "tree":
        h = height * rng.uniform(0.40, 0.72) * scale
        w = h * rng.uniform(0.50, 0.70)
    elif kind == "house":
        w = width * rng.uniform(0.24, 0.38) * scale
        h = min(w * rng.uniform(0.75, 1.05), height * 0.6)
    elif kind == "car":
        w = width * rng.uniform(0.26, 0.40) * scale
        h = w * rng.uniform(0.38, 0.46)
    else:  # ball
        w = h = min(width, height) * rng.uniform(0.16, 0.26) * max(scale, 0.7)
    w = min(w, width * 0.6)
    # feet below the horizon, top inside the picture
    low = min(max(horizon_y + 0.08 * height, h + 0.04 * height), height * 0.97)
    foot = rng.uniform(low, height * 0.97)
    if edge:  # near the left or right border, where a crop can keep it or cut it away
        cx = rng.uniform(0.03 * width + w / 2, 0.18 * width + w / 2)
        cx = cx if rng.random() < 0.5 else width - cx
    else:
        cx = rng.uniform(0.14 * width + w / 2, 0.86 * width - w / 2) if w < 0.72 * width else width / 2
    box = [cx - w / 2, foot - h, cx + w / 2, foot]
    box[1] = max(box[1], 0.03 * height)
    head = None
    if kind == "person":
        head_h = (box[3] - box[1]) * 0.17
        head_w = head_h * 0.85
        head = [cx - head_w / 2, box[1], cx + head_w / 2, box[1] + head_h]
    return [float(v) for v in box], (None if head is None else [float(v) for v in head])


def _area(box: list[float]) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def _overlap(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return ix * iy / max(1e-9, min(_area(a), _area(b)))


def _colour(kind: str, rng: np.random.Generator) -> tuple[int, int, int]:
    table = {"person": SHIRTS, "car": CARS, "ball": BALLS, "house": WALLS}.get(kind)
    if table is None:  # tree: canopy green, varied
        return (int(rng.integers(20, 60)), int(rng.integers(90, 150)), int(rng.integers(10, 60)))
    return tuple(int(v) for v in table[int(rng.integers(len(table)))])


def make_scene(rng: np.random.Generator) -> Scene:
    """Draw the facts of one photograph: size, horizon, sky/ground, 1-3 subjects (main first)."""
    width, height = _size(rng)
    y_mid = rng.uniform(0.28, 0.68) * height
    tilt = np.tan(np.radians(rng.uniform(-2.5, 2.5))) * width
    horizon = (float(y_mid - tilt / 2), float(y_mid + tilt / 2))
    sky = SKIES[int(rng.integers(len(SKIES)))]
    ground = GROUNDS[int(rng.integers(len(GROUNDS)))]
    main_kind = "person" if rng.random() < 0.5 else KINDS[1 + int(rng.integers(len(KINDS) - 1))]
    subjects: list[Subject] = []
    box, head = _subject_box(main_kind, rng, width, height, max(horizon), 1.0)
    subjects.append(Subject(main_kind, box, head, _colour(main_kind, rng)))
    extra = int(rng.choice(3, p=(0.3, 0.45, 0.25)))
    for _ in range(extra):
        kind = "person" if rng.random() < 0.55 else KINDS[1 + int(rng.integers(len(KINDS) - 1))]
        for _attempt in range(6):
            box, head = _subject_box(kind, rng, width, height, max(horizon), rng.uniform(0.55, 0.85),
                                     edge=rng.random() < 0.6)
            small = _area(box) <= 0.6 * _area(subjects[0].box)  # the main subject stays the largest
            if small and all(_overlap(box, s.box) < 0.08 for s in subjects):
                subjects.append(Subject(kind, box, head, _colour(kind, rng)))
                break
    scene = Scene(width, height, horizon, sky, ground, subjects, 0, int(rng.integers(2**31 - 1)))
    # facts as scenes.json stores them (2 decimals), so files, pixels and scores all see the same numbers
    return Scene.from_json(scene.to_json())


# ---------------------------------------------------------------- pixels

def _sky(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    h, w = scene.height, scene.width
    tops = {"day": ((200, 120, 40), (245, 215, 170)), "sunset": ((120, 60, 90), (90, 170, 250)),
            "overcast": ((150, 145, 140), (215, 212, 208)), "dusk": ((90, 40, 30), (170, 120, 150))}
    top, bottom = (np.array(c, dtype=np.float32) for c in tops[scene.sky])
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    t = np.clip(t / max(1e-3, max(scene.horizon) / h), 0, 1)
    img = top * (1 - t) + bottom * t
    img = np.broadcast_to(img, (h, w, 3)).copy()
    clouds = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(0, 5))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, max(scene.horizon) * 0.8)
        axes = (int(rng.uniform(0.05, 0.16) * w), int(rng.uniform(0.02, 0.05) * h))
        cv2.ellipse(clouds, (int(cx), int(cy)), axes, 0, 0, 360, 1.0, -1)
    if clouds.any():
        clouds = cv2.GaussianBlur(clouds, (0, 0), 0.02 * w + 1)
        tint = 250.0 if scene.sky != "dusk" else 190.0
        img = img * (1 - 0.7 * clouds[..., None]) + tint * 0.7 * clouds[..., None]
    return img


def _ground(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    h, w = scene.height, scene.width
    base = {"grass": (40, 140, 70), "sand": (120, 185, 215), "field": (50, 150, 170), "beach": (130, 195, 225),
            "meadow": (50, 160, 110)}[scene.ground]
    noise = rng.standard_normal((h, w)).astype(np.float32)
    if scene.ground in ("grass", "meadow"):
        noise = cv2.blur(noise, (1, 7)) * 2.5  # vertical blades
    elif scene.ground == "field":
        rows = np.arange(h, dtype=np.float32)[:, None]
        noise = cv2.GaussianBlur(noise, (0, 0), 1.5) + 1.2 * np.sin(rows * 0.35 + 0.02 * np.arange(w))
    else:
        noise = cv2.GaussianBlur(noise, (0, 0), 1.0) * 1.5
    img = np.array(base, np.float32) + 18.0 * noise[..., None]
    y = np.arange(h, dtype=np.float32)[:, None, None]
    img *= 0.82 + 0.18 * np.clip((y - min(scene.horizon)) / h * 2, 0, 1)  # darker towards the horizon haze
    if scene.ground == "beach":  # a band of sea between the horizon and the shore
        shore = scene.horizon_at(np.arange(w)) + rng.uniform(0.08, 0.16) * h
        ripples = cv2.blur(rng.standard_normal((h, w)).astype(np.float32), (15, 1)) * 3.0
        sea = np.array((150, 95, 30), np.float32) + 14.0 * ripples[..., None]
        mask = (np.arange(h)[:, None] < shore[None, :]).astype(np.float32)[..., None]
        img = sea * mask + img * (1 - mask)
    return img


def _outline(img: np.ndarray, colour: tuple[int, int, int], draw) -> None:
    """Draw a filled shape with a dark outline so it separates from any background."""
    draw(img, (25, 25, 25), 3)
    draw(img, colour, -1)


def _draw_person(img: np.ndarray, s: Subject, rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = s.box
    h, cx = y2 - y1, (x1 + x2) / 2
    head = s.head or [cx - h * 0.07, y1, cx + h * 0.07, y1 + h * 0.17]
    hr = (head[3] - head[1]) / 2
    hc = (int(cx), int(head[1] + hr))
    skin = SKIN[int(rng.integers(len(SKIN)))]
    hair = (int(rng.integers(10, 60)),) * 3
    torso_top, torso_bot = head[3] + 0.02 * h, y1 + 0.60 * h
    half = (x2 - x1) / 2
    body = np.array([[cx - half * 0.62, torso_top], [cx + half * 0.62, torso_top],
                     [cx + half * 0.72, torso_bot], [cx - half * 0.72, torso_bot]], np.int32)
    legs_col = (int(rng.integers(40, 110)), int(rng.integers(20, 60)), int(rng.integers(10, 40)))
    leg_w = max(2, int(half * 0.28))
    for side in (-1, 1):  # legs and arms under the outline pass
        cv2.line(img, (int(cx + side * half * 0.3), int(torso_bot)), (int(cx + side * half * 0.4), int(y2 - leg_w / 2)),
                 (25, 25, 25), leg_w + 3)
        cv2.line(img, (int(cx + side * half * 0.3), int(torso_bot)), (int(cx + side * half * 0.4), int(y2 - leg_w / 2)),
                 legs_col, leg_w)
        arm = [(int(cx + side * half * 0.62), int(torso_top + 0.03 * h)), (int(cx + side * half * 0.98), int(y1 + 0.55 * h))]
        cv2.line(img, arm[0], arm[1], (25, 25, 25), max(2, leg_w - 1) + 3)
        cv2.line(img, arm[0], arm[1], s.colour, max(2, leg_w - 1))
    _outline(img, s.colour, lambda im, c, t: cv2.fillPoly(im, [body], c) if t < 0 else cv2.polylines(im, [body], True, c, t))
    _outline(img, skin, lambda im, c, t: cv2.circle(im, hc, max(2, int(hr)), c, t))
    cv2.ellipse(img, (hc[0], int(hc[1] - 0.25 * hr)), (max(2, int(hr * 0.97)), max(2, int(hr * 0.75))), 0, 180, 360,
                hair, -1)


def _draw_tree(img: np.ndarray, s: Subject, rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = s.box
    w, h, cx = x2 - x1, y2 - y1, (x1 + x2) / 2
    trunk = (int(cx - w * 0.08), int(y1 + h * 0.5), int(cx + w * 0.08), int(y2))
    _outline(img, (30, 60, 100), lambda im, c, t: cv2.rectangle(im, trunk[:2], trunk[2:], c, t))
    blobs = [(cx, y1 + h * 0.32, w * 0.42), (cx - w * 0.22, y1 + h * 0.42, w * 0.28), (cx + w * 0.22, y1 + h * 0.42, w * 0.28)]
    for bx, by, r in blobs:
        cv2.circle(img, (int(bx), int(by)), int(r), (25, 25, 25), -1, cv2.LINE_AA)
    for bx, by, r in blobs:
        cv2.circle(img, (int(bx), int(by)), max(1, int(r) - 3), s.colour, -1, cv2.LINE_AA)
    light = tuple(min(255, int(v * 1.5)) for v in s.colour)
    cv2.circle(img, (int(cx - w * 0.12), int(y1 + h * 0.25)), max(1, int(w * 0.12)), light, -1, cv2.LINE_AA)


def _draw_house(img: np.ndarray, s: Subject, rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = s.box
    w, h = x2 - x1, y2 - y1
    wall_top = y1 + h * 0.42
    roof = np.array([[x1 - w * 0.02, wall_top], [(x1 + x2) / 2, y1], [x2 + w * 0.02, wall_top]], np.int32)
    roof_col = ((30, 40, 150), (40, 40, 60), (20, 80, 160))[int(rng.integers(3))]
    _outline(img, s.colour, lambda im, c, t: cv2.rectangle(im, (int(x1), int(wall_top)), (int(x2), int(y2)), c, t))
    _outline(img, roof_col, lambda im, c, t: cv2.fillPoly(im, [roof], c) if t < 0 else cv2.polylines(im, [roof], True, c, t))
    door = (int(x1 + w * 0.42), int(y1 + h * 0.68), int(x1 + w * 0.58), int(y2))
    cv2.rectangle(img, door[:2], door[2:], (30, 50, 90), -1)
    for wx in (0.14, 0.68):
        cv2.rectangle(img, (int(x1 + w * wx), int(y1 + h * 0.52)), (int(x1 + w * (wx + 0.18)), int(y1 + h * 0.68)),
                      (60, 40, 20), -1)
        cv2.rectangle(img, (int(x1 + w * wx) + 2, int(y1 + h * 0.52) + 2),
                      (int(x1 + w * (wx + 0.18)) - 2, int(y1 + h * 0.68) - 2), (230, 200, 150), -1)


def _draw_car(img: np.ndarray, s: Subject, rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = s.box
    w, h = x2 - x1, y2 - y1
    cabin = np.array([[x1 + w * 0.22, y1 + h * 0.45], [x1 + w * 0.32, y1], [x1 + w * 0.70, y1],
                      [x1 + w * 0.82, y1 + h * 0.45]], np.int32)
    _outline(img, s.colour, lambda im, c, t: cv2.fillPoly(im, [cabin], c) if t < 0 else cv2.polylines(im, [cabin], True, c, t))
    glass = np.array([[x1 + w * 0.28, y1 + h * 0.42], [x1 + w * 0.35, y1 + h * 0.1], [x1 + w * 0.67, y1 + h * 0.1],
                      [x1 + w * 0.76, y1 + h * 0.42]], np.int32)
    cv2.fillPoly(img, [glass], (90, 60, 40))
    body = (int(x1), int(y1 + h * 0.42), int(x2), int(y1 + h * 0.82))
    _outline(img, s.colour, lambda im, c, t: cv2.rectangle(im, body[:2], body[2:], c, t))
    r = int(h * 0.18)
    for wx in (0.22, 0.78):
        cv2.circle(img, (int(x1 + w * wx), int(y2 - r)), r, (20, 20, 20), -1, cv2.LINE_AA)
        cv2.circle(img, (int(x1 + w * wx), int(y2 - r)), max(1, r // 2), (170, 170, 170), -1, cv2.LINE_AA)


def _draw_ball(img: np.ndarray, s: Subject, rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = s.box
    c = (int((x1 + x2) / 2), int((y1 + y2) / 2))
    r = int((x2 - x1) / 2)
    shadow = (c[0] + r // 3, int(y2))
    cv2.ellipse(img, shadow, (r, max(1, r // 5)), 0, 0, 360, (30, 40, 40), -1, cv2.LINE_AA)
    _outline(img, s.colour, lambda im, col, t: cv2.circle(im, c, r, col, t, cv2.LINE_AA))
    for dy in (-0.35, 0.35):  # stripes
        cv2.ellipse(img, (c[0], c[1] + int(dy * r)), (max(1, int(r * 0.88)), max(1, int(r * 0.15))), 0, 0, 360,
                    (250, 250, 250), 2, cv2.LINE_AA)
    cv2.circle(img, (c[0] - r // 3, c[1] - r // 2), max(1, r // 5), (255, 255, 255), -1, cv2.LINE_AA)


DRAW = {"person": _draw_person, "tree": _draw_tree, "house": _draw_house, "car": _draw_car, "ball": _draw_ball}


def render_scene(scene: Scene) -> np.ndarray:
    """The photograph of `scene` as a (height, width, 3) uint8 BGR array (deterministic)."""
    rng = np.random.default_rng(scene.seed)
    h, w = scene.height, scene.width
    sky = _sky(scene, rng)
    ground = _ground(scene, rng)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.array([[0, scene.horizon[0]], [w, scene.horizon[1]], [w, h], [0, h]], np.int32)], 255,
                 cv2.LINE_AA)
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    img = np.clip(ground * alpha + sky * (1 - alpha), 0, 255).astype(np.uint8)
    # far subjects (feet nearer the horizon) first, so nearer ones overlap them
    for s in sorted(scene.subjects, key=lambda s: s.box[3]):
        DRAW[s.kind](img, s, rng)
    grain = rng.standard_normal((h, w, 1)).astype(np.float32) * 3.0
    img = cv2.GaussianBlur(img, (0, 0), 0.7).astype(np.float32) + grain
    return np.clip(img, 0, 255).astype(np.uint8)
