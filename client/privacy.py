"""Client-side fixed clipping for Flower's DifferentialPrivacyClientSideFixedClipping wrapper.

When the server's strategy is wrapped (server/strategy.py, federation.dp_clipping_norm), its
training messages carry a clipping norm; the device clips its update (trained minus received
weights, L2 over all floating arrays) to that norm with Flower's own
`compute_clip_model_update`. Flower's `fixedclipping_mod` does the same but cannot sit in
this ClientApp: it answers messages without a norm with an error, and it multiplies every
array in place, which fails on the int64 step counters of BatchNorm (measured:
UFuncOutputCastingError). Counters are sent unchanged; messages without a norm pass through.
"""
from __future__ import annotations

import numpy as np

from flwr.app import Array, ArrayRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, compute_clip_model_update

from pic_core.exchange import ARRAYS


def clipping_norm(message: Message) -> float | None:
    for record in message.content.config_records.values():
        if KEY_CLIPPING_NORM in record:
            return float(record[KEY_CLIPPING_NORM])
    return None


def optional_clipping_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    norm = clipping_norm(message) if message.metadata.message_type == MessageType.TRAIN else None
    if norm is None:
        return call_next(message, context)
    received = {k: a.numpy() for k, a in message.content[ARRAYS].items()}
    reply = call_next(message, context)
    if reply.has_error():
        return reply
    sent = {k: a.numpy() for k, a in reply.content[ARRAYS].items()}
    if set(sent) != set(received):
        raise ValueError("DP clipping needs full weights of every shared key (federation.fp16=false, "
                         "federation.freeze_backbone=false)")
    floats = [k for k in sent if np.issubdtype(sent[k].dtype, np.floating)]
    trained = [sent[k].astype(np.float64) for k in floats]
    compute_clip_model_update(trained, [received[k].astype(np.float64) for k in floats], norm)
    clipped = {**sent, **{k: v.astype(sent[k].dtype) for k, v in zip(floats, trained)}}
    reply.content[ARRAYS] = ArrayRecord({k: Array(np.require(v, requirements="C")) for k, v in clipped.items()})
    return reply
