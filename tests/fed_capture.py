"""Test instrumentation for the federation: real Flower messages built and captured.

`capture_mod` is a Flower client mod: it runs the real ClientApp and writes everything the
reply carries (every record, every array's bytes, every metric) to the folder named by the
FEDPIC_CAPTURE_DIR environment variable, with the devices' d_u at that moment (read from
their state files under FEDPIC_CAPTURE_STATES, for the test's comparison only). Simulated devices are Ray worker
processes, hence a folder rather than memory. Imported by reference, so the workers load
this module (tests/ is on the path Ray hands its workers).
"""
from __future__ import annotations

import json
import os
import pickle
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict

from pic_core.config import Config, to_dict
from pic_core.exchange import ARRAYS, CONFIG, FEDPIC_CONFIG
from pic_core.model import CropScorer
from pic_core.params import shared_state, to_numpy

CAPTURE_ENV = "FEDPIC_CAPTURE_DIR"
STATES_ENV = "FEDPIC_CAPTURE_STATES"
"""The folder holding the devices' state folders (simulation: <out>/devices)."""


def describe(message: Message) -> dict:
    """Everything a reply carries, as plain Python (records by kind, arrays as numpy)."""
    content = message.content
    return {
        "type": message.metadata.message_type,
        "record_names": sorted(content.keys()),
        "arrays": {name: {k: a.numpy() for k, a in record.items()} for name, record in content.array_records.items()},
        "metrics": {name: dict(record) for name, record in content.metric_records.items()},
        "configs": {name: dict(record) for name, record in content.config_records.items()},
    }


def capture_mod(message: Message, context: Context, call_next) -> Message:
    reply = call_next(message, context)
    folder = Path(os.environ[CAPTURE_ENV])
    folder.mkdir(parents=True, exist_ok=True)
    record = {"error": reply.has_error(), "node_config": dict(context.node_config)}
    if reply.has_content():
        record.update(describe(reply))
    state_root = os.environ.get(STATES_ENV) or context.node_config.get("state-dir")
    record["state_files"] = [str(p) for p in Path(str(state_root)).glob("*/personal.pt")] if state_root else []
    deltas = {}
    for path in record["state_files"]:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        deltas[payload["user_id"]] = payload["personal"]["personal.delta"].numpy()
    record["deltas_on_disk"] = deltas
    (folder / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.pkl").write_bytes(pickle.dumps(record))
    return reply


def read_captures(folder: Path) -> list[dict]:
    return [pickle.loads(p.read_bytes()) for p in sorted(Path(folder).glob("*.pkl"))]


def server_message(config: Config, model: CropScorer, message_type: str = MessageType.TRAIN,
                   server_round: int = 1) -> Message:
    """A message as the ServerApp sends it: SHARED arrays + the fedpic config."""
    arrays = ArrayRecord({k: Array(np.require(v, requirements="C")) for k, v in to_numpy(shared_state(model)).items()})
    config_record = ConfigRecord({FEDPIC_CONFIG: json.dumps(to_dict(config)), "server-round": server_round})
    metadata = Metadata(run_id=1, message_id=uuid.uuid4().hex, src_node_id=1, dst_node_id=7, reply_to_message_id="",
                        group_id=str(server_round), created_at=time.time(), ttl=3600.0, message_type=message_type)
    return Message(content=RecordDict({ARRAYS: arrays, CONFIG: config_record}), metadata=metadata)


def device_context(data_dir: Path, user_id: str, state_dir: Path) -> Context:
    """The context of a real device: its own data, user and state folder in the node config."""
    node_config = {"data-dir": str(data_dir), "user-id": user_id, "state-dir": str(state_dir), "threads": 1}
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})
