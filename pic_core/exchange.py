"""What travels between the federation server and a device, as plain numpy (no Flower here).

The server sends the SHARED weights (fp32) and the run's fedpic config as JSON; a device
answers with an update of the SHARED keys it trained:

- `weights`: the trained arrays themselves, in the model's dtypes (the plain FedAvg reply);
- `delta16`: trained minus received, float arrays cast to float16 (integer buffers such as
  BatchNorm's step counter travel as int64 differences). Half the bytes of fp32 weights,
  and the rounding error is relative to the small round update, not to the weights.

With a frozen backbone a device uploads only the keys after the backbone taps. The server
decodes every update back to full fp32 weights before its strategy sees them, so Flower's
strategies (FedAvg, FedAdam, FedMedian...) aggregate ordinary weights. Both sides import
this module; the record and metric names they share are defined here too.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from .params import is_backbone_tap, is_personal

ARRAYS = "arrays"
"""Record name of the ArrayRecord in every message (Flower strategies' default)."""
CONFIG = "config"
"""Record name of the ConfigRecord the server sends (Flower strategies' default)."""
METRICS = "metrics"
"""Record name of the MetricRecord a device replies with."""
NUM_EXAMPLES = "num-examples"
"""Aggregation weight in every device reply: images the device trained or evaluated on."""
FEDPIC_CONFIG = "fedpic-config"
"""ConfigRecord key: the run's fedpic Config as JSON (stage settings, federation section)."""
REFIT_ACTION = "refit"
"""Action of the end-of-federation message (message type `query.refit`): the final SHARED weights
in, each device refits and saves its personal state, scalar metrics out."""
REFIT_MESSAGE = f"query.{REFIT_ACTION}"
POOL_PARTITION = "pool-partition-id"
"""ConfigRecord key (device-pool simulation only): the population index of the user a pool node plays."""
ENCODINGS = ("weights", "delta16")


class UpdateError(ValueError):
    """A device update that does not fit the model it claims to update."""


def upload_keys(keys: Iterable[str], freeze_backbone: bool) -> list[str]:
    """The SHARED keys a device sends back: all of them, or those after the frozen backbone taps."""
    return [k for k in keys if not is_personal(k) and not (freeze_backbone and is_backbone_tap(k))]


def encoding_for(fp16: bool) -> str:
    return "delta16" if fp16 else "weights"


def encode_update(trained: Mapping[str, np.ndarray], received: Mapping[str, np.ndarray], keys: Sequence[str],
                  encoding: str) -> dict[str, np.ndarray]:
    """The device's reply arrays for `keys` (see the module docstring for the encodings)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown update encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    out: dict[str, np.ndarray] = {}
    for key in keys:
        if is_personal(key):
            raise UpdateError(f"{key}: a PERSONAL key never leaves the device")
        value = np.asarray(trained[key])
        if encoding == "weights":
            out[key] = np.require(value, requirements="C")
        elif np.issubdtype(value.dtype, np.floating):  # np.asarray: 0-d arithmetic gives numpy scalars
            out[key] = np.asarray((value.astype(np.float32) - np.asarray(received[key], np.float32))
                                  .astype(np.float16))
        else:
            out[key] = np.asarray(value.astype(np.int64) - np.asarray(received[key]).astype(np.int64))
    return out


def decode_update(update: Mapping[str, np.ndarray], received: Mapping[str, np.ndarray],
                  encoding: str) -> dict[str, np.ndarray]:
    """Full weights (received dtypes) from a device update; keys it did not send keep `received`.

    UpdateError for a key the model does not have, a PERSONAL key, or a wrong shape.
    """
    unknown = [k for k in update if k not in received]
    if unknown:
        raise UpdateError(f"update has keys the model does not: {unknown[:3]}")
    personal = [k for k in update if is_personal(k)]
    if personal:
        raise UpdateError(f"update carries PERSONAL keys: {personal[:3]}")
    full: dict[str, np.ndarray] = {}
    for key, base in received.items():
        base = np.asarray(base)
        if key not in update:
            full[key] = base
            continue
        value = np.asarray(update[key])
        if value.shape != base.shape:
            raise UpdateError(f"{key}: shape {value.shape}, the model has {base.shape}")
        if encoding == "weights":
            full[key] = value.astype(base.dtype, copy=False)
        elif encoding == "delta16":
            full[key] = np.asarray((base.astype(np.float64) + value.astype(np.float64)).astype(base.dtype))
        else:
            raise ValueError(f"unknown update encoding {encoding!r}")
    return full


BN_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")
"""Suffixes of BatchNorm buffers: statistics of the data a device saw, not weights it trained."""


def is_statistic(key: str) -> bool:
    """A BatchNorm buffer (screened apart from the weights; FedAvgM averages it plainly)."""
    return key.endswith(BN_STATISTICS)


def update_norm(full: Mapping[str, np.ndarray], received: Mapping[str, np.ndarray],
                statistics: bool = False) -> float:
    """L2 norm of (full - received) over the floating-point arrays: how far a device moved.

    Trained weights only by default (`statistics=True`: the BatchNorm running statistics only):
    running variances of a head's inputs are in the hundreds for a pretrained backbone's features
    and move by that much between rounds, which would drown every weight update."""
    total = 0.0
    for key, value in full.items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating) and is_statistic(key) == statistics:
            diff = value.astype(np.float64) - np.asarray(received[key], np.float64)
            total += float(np.dot(diff.ravel(), diff.ravel()))
    return float(np.sqrt(total))


def negative_variances(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """BatchNorm running variances with a negative entry (no data can produce one)."""
    return [key for key, value in arrays.items() if key.endswith("running_var") and (np.asarray(value) < 0).any()]


def all_finite(arrays: Mapping[str, np.ndarray]) -> bool:
    return all(np.isfinite(np.asarray(v)).all() for v in arrays.values()
               if np.issubdtype(np.asarray(v).dtype, np.floating))


def conform(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cast aggregated arrays back to the reference dtypes (integer buffers rounded)."""
    out = {}
    for key, ref in reference.items():
        value = np.asarray(arrays[key])
        ref_dtype = np.asarray(ref).dtype
        if np.issubdtype(ref_dtype, np.integer) and not np.issubdtype(value.dtype, np.integer):
            value = np.rint(value)
        out[key] = value.astype(ref_dtype, copy=False)
    return out


def payload_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    return int(sum(np.asarray(v).nbytes for v in arrays.values()))
