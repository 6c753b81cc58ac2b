"""Model files and user-state files: versioned, atomic, and strict about what they contain.

A model file holds the SHARED weights, the model config and the full run config, the stage
that produced it and the fedpic version. A user-state file holds one user's PERSONAL
tensors (d_u, personal head, crop-head offsets) and which model they were fitted on; it is the thing that
stays on a device.
"""
from __future__ import annotations

import hashlib
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from . import __version__
from .atomic import atomic_open
from .backbone import BACKBONES, LEGACY_BACKBONE
from .config import ConfigError, ModelConfig, from_dict, to_dict
from .model import CropScorer
from .params import load_personal, load_shared, personal_state, shared_state

MODEL_FORMAT = "fedpic-model"
USER_STATE_FORMAT = "fedpic-user-state"
FORMAT_VERSION = 1

PathLike = Union[str, Path]


class CheckpointError(ValueError):
    """A model or user-state file that cannot be used; the message names the file."""


def atomic_save(obj: Any, path: PathLike) -> Path:
    """torch.save through pic_core.atomic: a crash mid-write leaves the previous file intact."""
    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)
    return Path(path)


def read_payload(path: PathLike, expected_format: str) -> dict:
    """A fedpic file's payload, checked for its format name and version (CheckpointError names the file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable fedpic file ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: expected a {expected_format} file, found {found!r}")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: file format version {version} (written by fedpic "
                              f"{payload.get('fedpic_version', '?')}); this fedpic {__version__} reads version "
                              f"{FORMAT_VERSION}")
    return payload


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """Short hash of a state's bytes: identifies which shared model a user state belongs to."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def check_finite(path: PathLike, tensors: Mapping[str, Any], what: str) -> None:
    """A file whose weights hold NaN/inf would crop with NaN scores: refuse it, naming a tensor."""
    for key, value in tensors.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: {what} {key} holds non-finite values (NaN/inf)")


def save_model(path: PathLike, model: CropScorer, run_config: Optional[dict] = None, stage: str = "",
               extra: Optional[dict] = None) -> Path:
    """Write a model file with the SHARED weights only."""
    shared = shared_state(model)
    payload = {
        "format": MODEL_FORMAT,
        "format_version": FORMAT_VERSION,
        "fedpic_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "stage": stage,
        "model_config": to_dict(model.config),
        "run_config": run_config or {},
        "fingerprint": state_fingerprint(shared),
        "state_dict": shared,
        "extra": extra or {},
    }
    return atomic_save(payload, path)


def load_model(path: PathLike, device: Union[str, torch.device] = "cpu") -> tuple[CropScorer, dict]:
    """(model in eval mode, metadata) from a model file. Backbone weights are in the file."""
    payload = read_payload(path, MODEL_FORMAT)
    stored = payload.get("model_config")
    if isinstance(stored, dict) and "backbone" not in stored:
        stored = {**stored, "backbone": LEGACY_BACKBONE}  # written before Lite0: always MobileNetV2
    try:
        config = from_dict(ModelConfig, stored, "model_config")
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if config.backbone not in BACKBONES:
        raise CheckpointError(f"{path}: model_config.backbone {config.backbone!r} is not one of {', '.join(BACKBONES)}")
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: no state_dict in the model file")
    check_finite(path, state, "weight")
    try:
        fingerprint = state_fingerprint(state)
    except (AttributeError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: state_dict holds a non-tensor ({exc})") from None
    if payload.get("fingerprint") != fingerprint:
        raise CheckpointError(f"{path}: stored fingerprint {payload.get('fingerprint')!r} does not match its "
                              f"weights ({fingerprint}): the file was altered or damaged")
    config.backbone_weights = None  # the trained weights are in this file
    model = CropScorer(config, load_pretrained=False)
    try:
        load_shared(model, payload["state_dict"])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model.to(device).eval(), meta


def save_user_state(path: PathLike, model: CropScorer, user_id: str, extra: Optional[dict] = None) -> Path:
    """Write one user's PERSONAL tensors and the fingerprint of the model they were fitted on.
    Non-finite tensors are refused before anything is written (the previous file stays)."""
    check_finite(path, personal_state(model), "personal tensor")
    payload = {
        "format": USER_STATE_FORMAT,
        "format_version": FORMAT_VERSION,
        "fedpic_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "user_id": user_id,
        "embed_dim": model.config.embed_dim,
        "model_fingerprint": state_fingerprint(shared_state(model)),
        "personal": personal_state(model),
        "extra": extra or {},
    }
    return atomic_save(payload, path)


OPTIONAL_PERSONAL = {"personal.head.": "head", "personal.offsets.": "offsets"}


def _optional_parts(path: PathLike, model: CropScorer, personal: dict) -> dict:
    """Reconcile optional PERSONAL parts (personal head, crop-head offsets) between a user state
    and the model: a part the state lacks starts at zero (the generic model); a part the model
    lacks is dropped, unless it holds a fitted (non-zero) offset the model cannot apply."""
    model_keys = set(personal_state(model))
    for prefix, name in OPTIONAL_PERSONAL.items():
        in_state = [k for k in personal if k.startswith(prefix)]
        in_model = [k for k in model_keys if k.startswith(prefix)]
        if in_state and not in_model:
            if name == "offsets" and any(torch.as_tensor(personal[k]).any() for k in in_state):
                raise CheckpointError(f"{path}: user state has personal crop-head offsets but the model was built "
                                      "with personal_offsets: false")
            personal = {k: v for k, v in personal.items() if not k.startswith(prefix)}
        elif in_model and not in_state:
            personal.update({k: torch.zeros_like(v) for k, v in personal_state(model).items() if k.startswith(prefix)})
    return personal


def load_user_state(path: PathLike, model: CropScorer, strict: bool = True) -> dict:
    """Load a user state into `model`. A state fitted on a different shared model is an error
    (its d_u means nothing there) unless `strict` is False (a device between rounds, or a
    personalization that starts from an older state: then a warning)."""
    payload = read_payload(path, USER_STATE_FORMAT)
    if not isinstance(payload.get("personal"), dict):
        raise CheckpointError(f"{path}: no personal tensors in the user state")
    check_finite(path, payload["personal"], "personal tensor")
    if payload.get("embed_dim") != model.config.embed_dim:
        raise CheckpointError(f"{path}: user state has embed_dim {payload.get('embed_dim')}, "
                              f"the model has {model.config.embed_dim}")
    personal = _optional_parts(path, model, dict(payload["personal"]))
    try:
        load_personal(model, personal)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if payload.get("model_fingerprint") != state_fingerprint(shared_state(model)):
        message = (f"{path}: this user state was fitted on a different shared model; "
                   "re-run `fedpic personalize` with this model")
        if strict:
            raise CheckpointError(message)
        warnings.warn(message, stacklevel=2)
    return {k: v for k, v in payload.items() if k != "personal"}
