"""Inference runtime presets (`fedpic crop --profile`): plain data, importable without torch."""
from __future__ import annotations

from dataclasses import dataclass, field

FAST_MODEL = {"backbone": "mobilenet_v2", "width": 0.35, "short_side": 160, "hidden": 256}
"""What the shipped `fast` config sets (the `fast` profile warns when a model differs)."""


@dataclass(frozen=True)
class Profile:
    """Runtime settings for inference. The model's size comes from the model file itself.

    `fast` is meant for a model trained with the shipped `fast` config (`expects` lists the
    model fields that preset sets); with another model only its runtime settings apply.
    """

    name: str
    channels_last: bool = True  # NHWC input and weights (measured faster for MobileNetV2 on CPU)
    compile: bool = False  # on CPU: AOTInductor-compile the scoring graph once, cached (see export.py)
    expects: dict = field(default_factory=dict)
    faces: bool = True  # subject rule: look for faces (40-80 ms); False: saliency only (about 1 ms)
    description: str = ""


PROFILES = {
    "default": Profile("default", description="any model; eager PyTorch, channels-last"),
    "fast": Profile("fast", compile=True, expects=FAST_MODEL, faces=False,
                    description="a model trained with `--config fast`, compiled ahead of time on first use; "
                                "subjects by saliency only (no face detection)"),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[name]
