"""Which weights are SHARED (may leave a device) and which are PERSONAL (never do).

PERSONAL: every key under `personal.` (d_u, the optional personal head, the crop-head offsets).
SHARED: everything else in the state_dict, buffers included (BatchNorm statistics).
The federation exchanges SHARED keys only, as numpy arrays in a fixed key order.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Mapping

import numpy as np
import torch
from torch import nn

from .model import PERSONAL_PREFIX


BACKBONE_TAP_PREFIXES = ("backbone.stage3.", "backbone.stage4.", "backbone.stage5.")
"""The MobileNetV2 stages before the fused taps: what `freeze_backbone` holds fixed after pre."""


def is_personal(key: str) -> bool:
    return key.startswith(PERSONAL_PREFIX)


def is_backbone_tap(key: str) -> bool:
    return key.startswith(BACKBONE_TAP_PREFIXES)


def shared_keys(model: nn.Module) -> list[str]:
    return [k for k in model.state_dict() if not is_personal(k)]


def personal_keys(model: nn.Module) -> list[str]:
    return [k for k in model.state_dict() if is_personal(k)]


def shared_state(model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """Detached copies of the SHARED tensors, in state_dict order."""
    return OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items() if not is_personal(k))


def personal_state(model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """Detached copies of the PERSONAL tensors."""
    return OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items() if is_personal(k))


def load_shared(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load SHARED tensors; a PERSONAL key or a missing/extra/mis-shaped key is an error."""
    _load_part(model, state, personal=False)


def load_personal(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load PERSONAL tensors (a user state)."""
    _load_part(model, state, personal=True)


def _load_part(model: nn.Module, state: Mapping[str, torch.Tensor], personal: bool) -> None:
    kind = "PERSONAL" if personal else "SHARED"
    own = model.state_dict()
    expected = [k for k in own if is_personal(k) == personal]
    wrong_side = [k for k in state if is_personal(k) != personal]
    if wrong_side:
        raise KeyError(f"{kind} load got keys of the other part: {wrong_side[:3]}")
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in own]
    if missing or extra:
        raise KeyError(f"{kind} state does not match this model: missing {missing[:3]}, unexpected {extra[:3]}")
    for key in expected:
        value = torch.as_tensor(state[key])
        if tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(f"{kind} key {key}: shape {tuple(value.shape)}, model has {tuple(own[key].shape)}")
    with torch.no_grad():
        for key in expected:
            own[key].copy_(torch.as_tensor(state[key]).to(own[key].dtype))


def to_numpy(state: Mapping[str, torch.Tensor]) -> "OrderedDict[str, np.ndarray]":
    return OrderedDict((k, v.detach().cpu().numpy()) for k, v in state.items())


def from_numpy(arrays: Mapping[str, np.ndarray]) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict((k, torch.from_numpy(np.require(v, requirements="C"))) for k, v in arrays.items())


def trainable_shared_parameters(model: nn.Module, exclude_prefixes: Iterable[str] = ()) -> list[nn.Parameter]:
    """Shared parameters, minus any under the given prefixes (e.g. a frozen backbone)."""
    exclude = tuple(exclude_prefixes)
    return [p for n, p in model.named_parameters()
            if not is_personal(n) and not (exclude and n.startswith(exclude))]
