"""Hostile devices for experiments: a client mod that poisons the replies of chosen devices.

Kinds: "scale" multiplies the device's update (trained minus received weights) by `factor`
(a boosted model-replacement attack), "nan" fills every floating array with NaN (a broken or
malicious device), "liar" sends its update sign-flipped (an honest-looking norm) and claims
1e9 examples, so plain FedAvg would follow it alone. The mod sits outside the ClientApp, so
the device trains honestly and the poison is applied to what it sends, whatever the transport
encoding: with delta16 the reply is the update itself, with plain weights it is rewritten as received + factor * update.
Devices are picked by the simulation's partition-id.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from flwr.app import Array, ArrayRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable, Mod

from client.app import message_config, received_arrays
from pic_core.exchange import ARRAYS, METRICS, NUM_EXAMPLES, encoding_for

KINDS = ("scale", "nan", "liar")
LIAR_EXAMPLES = 1_000_000_000


def poison(update: Mapping[str, np.ndarray], received: Mapping[str, np.ndarray], encoding: str, kind: str,
           factor: float) -> dict[str, np.ndarray]:
    """The poisoned version of one reply's arrays (integer buffers are left alone)."""
    out = {}
    for key, value in update.items():
        if not np.issubdtype(value.dtype, np.floating):
            out[key] = value
        elif kind == "nan":
            out[key] = np.full_like(value, np.nan)
        elif kind == "liar":
            out[key] = poison({key: value}, received, encoding, "scale", -1.0)[key]
        elif encoding == "delta16":
            out[key] = (value.astype(np.float32) * factor).astype(value.dtype)
        else:
            base = np.asarray(received[key], np.float32)
            out[key] = (base + factor * (value.astype(np.float32) - base)).astype(value.dtype)
    return out


def attack_mod(attackers: Mapping[int, str], factor: float = 100.0) -> Mod:
    """A mod poisoning the training replies of the devices {partition-id: kind}."""
    for kind in attackers.values():
        if kind not in KINDS:
            raise ValueError(f"attack kind {kind!r}: expected one of {', '.join(KINDS)}")
    attackers = {int(k): v for k, v in attackers.items()}

    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(message, context)
        kind = attackers.get(int(context.node_config.get("partition-id", -1)))
        if kind is None or message.metadata.message_type != MessageType.TRAIN or reply.has_error():
            return reply
        encoding = encoding_for(message_config(message).federation.fp16)
        update = {k: a.numpy() for k, a in reply.content[ARRAYS].items()}
        poisoned = poison(update, received_arrays(message), encoding, kind, factor)
        reply.content[ARRAYS] = ArrayRecord({k: Array(np.require(v, requirements="C")) for k, v in poisoned.items()})
        if kind == "liar":
            reply.content[METRICS][NUM_EXAMPLES] = LIAR_EXAMPLES
        return reply

    return mod
