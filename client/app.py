"""The fedpic ClientApp: a device's side of a federated round (Flower Message API).

`train` messages: the SHARED weights and the run's fedpic config in, an update of the SHARED
keys (see pic_core.exchange) and scalar metrics out. `evaluate` messages: the SHARED weights
in, scalar metrics out. `query.refit` messages (REFIT_MESSAGE, the end of a federation): the
final SHARED weights in; the device refits and saves its personal state, scalar metrics out.
Nothing else is ever put in a reply: no PERSONAL key, no d_u, no
image or feature tensor. `app` is the component named in pyproject.toml; `make_client_app`
binds run-config values (what `fedpic simulate` does) and optional Flower mods.
"""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from pic_core.config import Config, ModelConfig, from_dict
from pic_core.exchange import ARRAYS, CONFIG, FEDPIC_CONFIG, METRICS, NUM_EXAMPLES, REFIT_ACTION, encode_update, \
    encoding_for, upload_keys
from pic_core.model import CropScorer
from pic_core.params import from_numpy, load_shared

from .local import configure_torch, evaluate_round, refit_round, train_round
from .pool import pool_context
from .privacy import optional_clipping_mod
from .settings import NodeSettings, node_settings


def message_config(message: Message) -> Config:
    """The run's fedpic Config the server put in the message, with progress bars off: a device's
    output is relayed into the server's log (Ray, SuperNode), where bars are only noise."""
    record = message.content[CONFIG]
    return replace(from_dict(Config, json.loads(str(record[FEDPIC_CONFIG])), "fedpic-config"), progress=False)


def received_arrays(message: Message) -> dict[str, np.ndarray]:
    return {key: array.numpy() for key, array in message.content[ARRAYS].items()}


def build_model(config: Config, arrays: Mapping[str, np.ndarray], settings: NodeSettings) -> CropScorer:
    """The server's model: its architecture from the config, its SHARED weights from the message."""
    model_config = from_dict(ModelConfig, {**vars(config.model), "backbone_weights": None}, "model")
    model = CropScorer(model_config, load_pretrained=False)  # the message carries every SHARED weight
    load_shared(model, from_numpy(arrays))
    return model.to(settings.device).eval()


def _settings(context: Context, config: Config, bound: Mapping[str, Any]) -> NodeSettings:
    settings = node_settings(context.node_config, {**context.run_config, **bound}, config.federation.population)
    configure_torch(settings)
    return settings


def handle_train(message: Message, context: Context, bound: Mapping[str, Any]) -> Message:
    config = message_config(message)
    settings = _settings(context, config, bound)
    received = received_arrays(message)
    model = build_model(config, received, settings)
    user = settings.dataset.user(settings.user_id)
    server_round = int(message.content[CONFIG].get("server-round", 0))
    proximal_mu = float(message.content[CONFIG].get("proximal-mu", 0.0))
    result = train_round(model, user, config, settings, server_round, proximal_mu)
    fed = config.federation
    update = encode_update(result.arrays, received, upload_keys(result.arrays, fed.freeze_backbone),
                           encoding_for(fed.fp16))
    metrics = MetricRecord({NUM_EXAMPLES: int(result.metrics.pop("images")), **result.metrics})
    content = RecordDict({ARRAYS: ArrayRecord({k: Array(v) for k, v in update.items()}), METRICS: metrics})
    return Message(content, reply_to=message)


def handle_evaluate(message: Message, context: Context, bound: Mapping[str, Any]) -> Message:
    config = message_config(message)
    settings = _settings(context, config, bound)
    model = build_model(config, received_arrays(message), settings)
    user = settings.dataset.user(settings.user_id)
    metrics = evaluate_round(model, user, config, settings)
    content = RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: len(user.split("test")), **metrics})})
    return Message(content, reply_to=message)


def handle_refit(message: Message, context: Context, bound: Mapping[str, Any]) -> Message:
    config = message_config(message)
    settings = _settings(context, config, bound)
    model = build_model(config, received_arrays(message), settings)
    metrics = refit_round(model, settings.dataset.user(settings.user_id), config, settings)
    content = RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: int(metrics.pop("images")), **metrics})})
    return Message(content, reply_to=message)


def make_client_app(bound: Optional[Mapping[str, Any]] = None, mods: Optional[Sequence[Mod]] = None,
                    node: Optional[Mapping[str, Any]] = None) -> ClientApp:
    """A ClientApp whose run config is `bound` on top of Flower's (data-dir, state-dir, device...).

    `node`: node-config defaults under Flower's node config (the simulation runner's device-pool
    settings, client/pool.py); a message may choose the user only where the node config allows it.
    The innermost mod is always optional_clipping_mod: DP clipping when the server sends a norm.
    """
    bound, node = dict(bound or {}), dict(node or {})
    client_app = ClientApp(mods=[*(mods or []), optional_clipping_mod])

    @client_app.train()
    def train(message: Message, context: Context) -> Message:
        return handle_train(message, pool_context(message, context, node), bound)

    @client_app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        return handle_evaluate(message, pool_context(message, context, node), bound)

    @client_app.query(REFIT_ACTION)
    def refit(message: Message, context: Context) -> Message:
        return handle_refit(message, pool_context(message, context, node), bound)

    return client_app


app = make_client_app()
