"""The server's checkpoint: SHARED weights, the round they belong to and the strategy state.

Written atomically after every round (pic_core.checkpoint.atomic_save: temp file, fsync,
rename), so a server stopped at any moment leaves the last completed round on disk.
`--resume` reads it back and continues with the next round. Flower has no built-in
checkpointing; this file is fedpic's own format ("fedpic-server-checkpoint").
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from pic_core import __version__
from pic_core.checkpoint import FORMAT_VERSION, CheckpointError, atomic_save, read_payload

CHECKPOINT_FORMAT = "fedpic-server-checkpoint"
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class ServerState:
    round: int  # last completed round (0: the initial model)
    arrays: dict[str, np.ndarray]
    strategy: str
    strategy_state: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    config: dict = field(default_factory=dict)  # the run's fedpic config (to_dict)


def _tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.require(v, requirements="C")) for k, v in arrays.items()}


def _arrays(tensors: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in tensors.items()}


def save_server_state(path: Path, state: ServerState) -> Path:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "fedpic_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "round": int(state.round),
        "strategy": state.strategy,
        "arrays": _tensors(state.arrays),
        "strategy_state": {name: _tensors(value) for name, value in state.strategy_state.items()},
        "config": state.config,
    }
    return atomic_save(payload, path)


def load_server_state(path: Path) -> ServerState:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no server checkpoint to resume from")
    payload = read_payload(path, CHECKPOINT_FORMAT)
    return ServerState(round=int(payload["round"]), arrays=_arrays(payload["arrays"]), strategy=payload["strategy"],
                       strategy_state={k: _arrays(v) for k, v in payload["strategy_state"].items()},
                       config=payload.get("config", {}))
