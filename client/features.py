"""Backbone outputs cached on the device while the backbone is frozen.

With `freeze_backbone` the MobileNetV2 stages never change after the pre stage, so their
fused taps of an image are the same in every round. The device computes them once (eval
mode, float16) and keeps them in `taps-<fingerprint>.pt` in its state folder; afterwards a
round costs no JPEG decode and no backbone pass, only the heads. The fingerprint covers
the backbone weights and the input size, so a different backbone never reads stale taps
(the old file is removed when a new one is written).
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Optional

import torch

from pic_core.checkpoint import atomic_save
from pic_core.data.records import CropSet
from pic_core.geometry import to_resized
from pic_core.model import CropScorer
from pic_core.params import is_backbone_tap
from pic_core.samples import Sample, SampleCache, annotator_labels, boxes_with_batch
from pic_core.train import backbone_taps, with_taps

log = logging.getLogger(__name__)

TAPS_FORMAT = "fedpic-device-taps"


def backbone_fingerprint(model: CropScorer) -> str:
    """Hash of the frozen backbone weights and the network input size."""
    digest = hashlib.sha256(f"short_side={model.config.short_side}".encode())
    for key, value in model.state_dict().items():
        if is_backbone_tap(key):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class TapSampleCache(SampleCache):
    """A SampleCache whose samples carry backbone taps instead of images.

    folder=None keeps the taps in memory for this object's life only (no disk cache). float16 taps
    halve a device's cache file; float32 ones score exactly as the backbone pass would (evaluation).
    """

    def __init__(self, model: CropScorer, folder: Optional[Path], device: Optional[torch.device] = None,
                 dtype: torch.dtype = torch.float16):
        super().__init__(model.config.short_side)
        self.model = model
        self.device = device
        self.dtype = dtype
        self.fingerprint = backbone_fingerprint(model)
        self.path = Path(folder) / f"taps-{self.fingerprint}.pt" if folder is not None else None
        self.entries: dict[str, dict] = {}
        self.computed = 0
        self._dirty = False
        if self.path is not None and self.path.is_file():
            self.entries = self._read(self.path)

    @staticmethod
    def _read(path: Path) -> dict[str, dict]:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file is rebuilt, not trusted
            log.warning("%s: unreadable taps cache (%s); recomputing", path, exc)
            return {}
        if not isinstance(payload, dict) or payload.get("format") != TAPS_FORMAT:
            log.warning("%s: not a taps cache; recomputing", path)
            return {}
        return dict(payload["entries"])

    def sample(self, crop_set: CropSet, user: int = -1) -> Sample:
        entry = self.entries.get(crop_set.name)
        if entry is None:
            plain = super().sample(crop_set, user)
            self._images.pop(Path(crop_set.image_path), None)  # the taps replace the decoded image
            taps = backbone_taps(self.model, plain, self.device, self.dtype)
            entry = {"taps": taps, "resized": tuple(plain.network_size), "original": tuple(plain.original_size)}
            self.entries[crop_set.name] = entry
            self.computed += 1
            self._dirty = True
            return with_taps(plain, taps)
        resized, original = tuple(entry["resized"]), tuple(entry["original"])
        boxes = to_resized(crop_set.boxes, original, resized)
        return Sample(crop_set.name, None, boxes_with_batch(boxes), torch.as_tensor(crop_set.scores), original,
                      user, annotator_labels(crop_set.annotator_scores), taps=entry["taps"], input_size=resized)

    def save(self) -> Optional[Path]:
        """Write new taps to disk (atomically) and drop caches of other backbones."""
        if self.path is None or not self._dirty:
            return None
        atomic_save({"format": TAPS_FORMAT, "fingerprint": self.fingerprint, "entries": self.entries}, self.path)
        for old in self.path.parent.glob("taps-*.pt"):
            if old != self.path:
                old.unlink(missing_ok=True)
        self._dirty = False
        return self.path
