"""Poisoned updates: the attack mod, screening of its output, Krum, client-side DP clipping."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, Krum

from client.privacy import KEY_CLIPPING_NORM, optional_clipping_mod
from fed_capture import server_message
from pic_core.config import ConfigError
from pic_core.exchange import ARRAYS, CONFIG, FEDPIC_CONFIG, METRICS, NUM_EXAMPLES, encode_update, upload_keys
from pic_core.model import CropScorer
from pic_core.params import shared_state, to_numpy
from server.screening import screen_replies
from server.strategy import build_strategy, sampling
from simulations.attacks import attack_mod


def _context(partition: int) -> Context:
    return Context(run_id=1, node_id=partition + 1, node_config={"partition-id": partition}, state=RecordDict(),
                   run_config={})


def _honest_app(shift: float):
    """A device that moves every float weight by `shift` and replies in the run's encoding."""
    def app(message: Message, context: Context) -> Message:
        config = json.loads(str(message.content[CONFIG][FEDPIC_CONFIG]))
        received = {k: a.numpy() for k, a in message.content[ARRAYS].items()}
        trained = {k: (v + shift if np.issubdtype(v.dtype, np.floating) else v) for k, v in received.items()}
        encoding = "delta16" if config["federation"]["fp16"] else "weights"
        keys = upload_keys(received, config["federation"]["freeze_backbone"])
        update = encode_update(trained, received, keys, encoding)
        content = RecordDict({ARRAYS: ArrayRecord({k: Array(np.require(v, requirements="C")) for k, v in update.items()}),
                              METRICS: MetricRecord({NUM_EXAMPLES: 4})})
        return Message(content, reply_to=message)
    return app


def test_attacked_replies_are_rejected_by_screening(tiny_config):
    model = CropScorer(tiny_config.model)
    received = to_numpy(shared_state(model))
    mod = attack_mod({1: "scale", 2: "nan"}, factor=100.0)
    replies = []
    for partition in range(6):
        message = server_message(tiny_config, model)
        replies.append(mod(message, _context(partition), _honest_app(1e-3 * (1 + 0.1 * partition))))
    result = screen_replies(replies, received, "delta16", max_update_norm=None, outlier_factor=10.0)
    assert result.counts()["rejected_nonfinite"] == 1, result.counts()
    assert result.counts()["rejected_norm"] == 1, result.counts()
    assert len(result.accepted) == 4
    assert {r.metadata.src_node_id for r in result.accepted}.isdisjoint({2, 3})  # node ids = partition + 1


def test_krum_and_dp_are_selectable_and_dp_needs_full_weights(tiny_config):
    fed = dataclasses.replace(tiny_config.federation, strategy="krum")
    assert isinstance(build_strategy(fed, sampling(fed, 10)), Krum)
    dp = dataclasses.replace(tiny_config.federation, dp_clipping_norm=0.5, dp_noise_multiplier=0.1)
    with pytest.raises(ConfigError, match="fp16=false"):
        build_strategy(dp, sampling(dp, 10))
    dp = dataclasses.replace(dp, fp16=False, freeze_backbone=False)
    assert isinstance(build_strategy(dp, sampling(dp, 10)), DifferentialPrivacyClientSideFixedClipping)


def test_the_device_clips_its_update_when_the_server_sends_a_norm(tiny_config):
    config = dataclasses.replace(tiny_config, federation=dataclasses.replace(tiny_config.federation, fp16=False,
                                                                             freeze_backbone=False))
    model = CropScorer(config.model)
    received = to_numpy(shared_state(model))
    message = server_message(config, model)
    plain = optional_clipping_mod(message, _context(0), _honest_app(0.05))  # no norm: passes through
    message.content[CONFIG][KEY_CLIPPING_NORM] = 0.5
    clipped = optional_clipping_mod(message, _context(0), _honest_app(0.05))

    def norm(reply: Message) -> float:
        arrays = {k: a.numpy() for k, a in reply.content[ARRAYS].items()}
        return float(np.sqrt(sum(np.sum((arrays[k].astype(np.float64) - received[k]) ** 2)
                                 for k in arrays if np.issubdtype(arrays[k].dtype, np.floating))))

    assert norm(plain) > 1.0
    assert norm(clipped) == pytest.approx(0.5, rel=1e-3)
