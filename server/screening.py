"""Update validation: decode every device reply to full weights and reject the bad ones.

A reply is rejected, and counted, when it is malformed (no single ArrayRecord/MetricRecord,
keys or shapes that do not fit the model, a PERSONAL key, no positive num-examples),
non-finite (NaN/inf anywhere in the update or its metrics; a negative BatchNorm running
variance), or a norm outlier: the L2 distance of its trained weights from the round's global
model above `max_update_norm`, an absolute bound that holds whatever the number of replies, or
above `outlier_factor` times the median distance of the round's replies when there are at least
three, times the smaller one when there are two. BatchNorm running statistics are measured apart
(their scale follows the data, not the learning rate) and face the relative rule only. Accepted
replies are rewritten in place to carry full fp32 weights, so Flower's strategies aggregate
plain weights whatever the transport encoding was.

The example count a reply claims is the FedAvg weight, and the server cannot check it: each
accepted claim is capped at `max_examples` (when set) and at the lower median of the round's
accepted claims, so no device weighs more than a typical honest one (with two replies: no
more than the other). A liar can only lower weights, which at worst makes the average plain.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional

import numpy as np

from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from pic_core.exchange import ARRAYS, METRICS, NUM_EXAMPLES, UpdateError, all_finite, decode_update, \
    negative_variances, payload_bytes, update_norm

log = logging.getLogger(__name__)


@dataclass
class Screening:
    accepted: list[Message] = field(default_factory=list)
    failures: int = 0  # replies that carried an error instead of content (the device raised)
    malformed: int = 0
    nonfinite: int = 0
    outliers: int = 0
    upload_bytes: list[int] = field(default_factory=list)  # array payload of every content reply
    norms: list[float] = field(default_factory=list)  # update norms of the accepted replies
    capped: int = 0  # accepted replies whose claimed example count was lowered

    def counts(self) -> dict[str, int]:
        return {"accepted": len(self.accepted), "failures": self.failures, "rejected_malformed": self.malformed,
                "rejected_nonfinite": self.nonfinite, "rejected_norm": self.outliers,
                "capped_examples": self.capped}


def _single(records: Mapping, what: str) -> object:
    if len(records) != 1:
        raise UpdateError(f"expected one {what}, got {len(records)}")
    return next(iter(records.values()))


def _metrics_ok(metrics: MetricRecord) -> bool:
    values = [v for value in metrics.values() for v in (value if isinstance(value, list) else [value])]
    return all(math.isfinite(float(v)) for v in values)


def _reference_norm(norms: list[float]) -> Optional[float]:
    """What `outlier_factor` multiplies: the median of >= 3 norms, the smaller of 2, none for 1."""
    if len(norms) >= 3:
        return float(np.median(norms))
    return min(norms) if len(norms) == 2 else None


def cap_examples(accepted: list[Message], max_examples: Optional[int]) -> int:
    """Cap each reply's claimed example count (see the module docstring); how many were lowered."""
    claims = [float(r.content[METRICS][NUM_EXAMPLES]) for r in accepted]
    if not claims:
        return 0
    cap = sorted(claims)[(len(claims) - 1) // 2]  # lower median
    if max_examples:
        cap = min(cap, float(max_examples))
    capped = 0
    for reply, claim in zip(accepted, claims):
        if claim > cap:
            capped += 1
            log.warning("device %s claimed %g examples; weighted as %g", reply.metadata.src_node_id, claim, cap)
            reply.content[METRICS][NUM_EXAMPLES] = int(cap) if float(cap).is_integer() else cap
    return capped


def screen_replies(replies: Iterable[Message], received: Mapping[str, np.ndarray], encoding: str,
                   max_update_norm: Optional[float], outlier_factor: float,
                   max_examples: Optional[int] = None) -> Screening:
    """Validate, decode and filter one round's training replies (see the module docstring)."""
    result = Screening()
    candidates: list[tuple[Message, dict[str, np.ndarray], MetricRecord, float]] = []
    for reply in replies:
        if reply.has_error():
            result.failures += 1
            log.warning("device %s failed: %s", reply.metadata.src_node_id, reply.error.reason)
            continue
        source = reply.metadata.src_node_id
        try:
            arrays = _single(reply.content.array_records, "ArrayRecord")
            metrics = _single(reply.content.metric_records, "MetricRecord")
            update = {key: array.numpy() for key, array in arrays.items()}
            result.upload_bytes.append(payload_bytes(update))
            weight = metrics.get(NUM_EXAMPLES)
            if not isinstance(weight, (int, float)) or not weight > 0:
                raise UpdateError(f"{NUM_EXAMPLES} must be a positive number, got {weight!r}")
            full = decode_update(update, received, encoding)
        except UpdateError as exc:
            result.malformed += 1
            log.warning("rejected the update of device %s: %s", source, exc)
            continue
        if not all_finite(update) or not _metrics_ok(metrics) or negative_variances(full):
            result.nonfinite += 1
            log.warning("rejected the update of device %s: non-finite values or negative variances", source)
            continue
        candidates.append((reply, full, metrics, update_norm(full, received),
                           update_norm(full, received, statistics=True)))
    reference = _reference_norm([c[3] for c in candidates])
    reference_stats = _reference_norm([c[4] for c in candidates])
    for reply, full, metrics, norm, stats_norm in candidates:
        too_far = max_update_norm is not None and norm > max_update_norm
        outlier = outlier_factor > 0 and reference is not None and norm > outlier_factor * max(reference, 1e-12)
        stats_outlier = (outlier_factor > 0 and reference_stats is not None
                         and stats_norm > outlier_factor * max(reference_stats, 1e-3))
        if too_far or outlier or stats_outlier:
            result.outliers += 1
            log.warning("rejected the update of device %s: norm %.4g (bound %s, reference %s), statistics %.4g "
                        "(reference %s)", reply.metadata.src_node_id, norm, max_update_norm,
                        "none" if reference is None else f"{reference:.4g}", stats_norm,
                        "none" if reference_stats is None else f"{reference_stats:.4g}")
            continue
        reply.content = RecordDict({ARRAYS: ArrayRecord({k: Array(np.asarray(v)) for k, v in full.items()}),
                                    METRICS: metrics})
        result.accepted.append(reply)
        result.norms.append(norm)
    result.capped = cap_examples(result.accepted, max_examples)
    return result
