"""Real photographs that ship inside packages, with subject boxes set by hand.

scikit-image's astronaut, camera, chelsea, coffee and rocket and matplotlib's grace_hopper;
each subject box (x1, y1, x2, y2, pixels) is what a crop must keep whole: a person's head
with hair or cap, the cameraman's head and camera, the cat's eyes and nose, the cup, the rocket.
Used by tests/test_subjects.py and benchmarks/real_photos.py.
"""
from __future__ import annotations

import numpy as np

SUBJECTS = {
    "astronaut": (150, 15, 300, 175),
    "camera": (155, 65, 330, 200),
    "chelsea": (130, 75, 350, 270),
    "coffee": (170, 15, 415, 305),
    "rocket": (300, 125, 345, 405),
    "grace_hopper": (150, 25, 375, 305),
}
RATIOS = ("1:1", "16:9", "4:5", "free")
KEPT = 0.95
"""A crop keeps the subject when it holds at least this share of the subject box."""


def load_photo(name: str) -> np.ndarray:
    """The photo as an RGB uint8 array (grey photos repeated over three channels)."""
    if name == "grace_hopper":
        from matplotlib import cbook
        from PIL import Image

        with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as img:
            image = np.asarray(img.convert("RGB"))
    else:
        import skimage.data

        image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def grown_box(subject, size: tuple[int, int], growth: float) -> np.ndarray:
    """A crop around `subject`: the box grown by `growth` of its width and height (half on each
    side), clipped to the (height, width) photo; what a person cropping tightly might draw."""
    x1, y1, x2, y2 = subject
    gx, gy = (x2 - x1) * growth / 2, (y2 - y1) * growth / 2
    return np.array([max(0, x1 - gx), max(0, y1 - gy), min(size[1], x2 + gx), min(size[0], y2 + gy)])


def subject_kept(box, subject, threshold: float = KEPT) -> bool:
    """Whether `box` holds at least `threshold` of the `subject` box."""
    x1, y1, x2, y2 = subject
    iw = max(0.0, min(box[2], x2) - max(box[0], x1))
    ih = max(0.0, min(box[3], y2) - max(box[1], y1))
    return iw * ih >= threshold * (x2 - x1) * (y2 - y1)
