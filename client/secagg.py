"""Device side of SecAgg+ (server/secagg.py): Flower's secaggplus_mod around a format adapter.

secaggplus_mod speaks the legacy FitIns/FitRes record layout; fedpic's ClientApp speaks
ARRAYS/CONFIG records. `optional_secagg_mod` is always installed and passes every message
through untouched unless it carries SecAgg+ stage configs; then secaggplus_mod runs the
protocol and, in the masked-vector stage, calls the adapter, which turns the FitIns into an
ordinary fedpic training message and the device's reply into float32 deltas of the uploaded
keys (deltas stay inside SecAgg+'s clipping range; full weights such as BatchNorm variances
would not).
"""
from __future__ import annotations

import json

import numpy as np

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from pic_core.exchange import ARRAYS, CONFIG, FEDPIC_CONFIG, METRICS, NUM_EXAMPLES, decode_update, encoding_for

ALL_KEYS = "fedpic-secagg-keys"  # the same names as server/secagg.py (client never imports server)
UPLOAD_KEYS = "fedpic-secagg-upload"


def optional_secagg_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    if RECORD_KEY_CONFIGS not in message.content.config_records:
        return call_next(message, context)
    return secaggplus_mod(message, context, lambda m, c: _fitins_adapter(m, c, call_next))


def _fitins_adapter(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    fitins = compat.recorddict_to_fitins(message.content, keep_input=True)
    config = dict(fitins.config)
    keys, upload = json.loads(str(config[ALL_KEYS])), json.loads(str(config[UPLOAD_KEYS]))
    received = dict(zip(keys, parameters_to_ndarrays(fitins.parameters), strict=True))
    content = RecordDict({
        ARRAYS: ArrayRecord({k: Array(np.require(v, requirements="C")) for k, v in received.items()}),
        CONFIG: ConfigRecord({FEDPIC_CONFIG: str(config[FEDPIC_CONFIG]), "server-round": int(config["server-round"])}),
    })
    reply = call_next(Message(content=content, metadata=message.metadata), context)
    if reply.has_error():
        return reply
    fed = json.loads(str(config[FEDPIC_CONFIG]))["federation"]
    update = {k: a.numpy() for k, a in reply.content[ARRAYS].items()}
    trained = decode_update(update, received, encoding_for(fed["fp16"]))
    deltas = [np.asarray(trained[k], np.float32) - np.asarray(received[k], np.float32) for k in upload]
    metrics = reply.content[METRICS] if METRICS in reply.content.metric_records else {}
    fitres = FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters(deltas), int(metrics.get(NUM_EXAMPLES, 1)), {})
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=message)
