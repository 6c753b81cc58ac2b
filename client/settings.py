"""Where a device's data and state live, and what it computes on, from Flower's configs.

A real device names its own data in its node config (`flower-supernode --node-config
"data-dir='/photos/me' user-id='me' state-dir='/var/lib/fedpic'"`). A simulated device has
only `partition-id`: it becomes the partition-id-th user of the dataset in the run config's
`data-dir` (sorted user ids, the first `federation.population` of them), with its state in
`<state-dir>/<user id>/`. Node config wins over run config. The user's own crops: node config
`crops-file`, else `<data-dir>/crops/<user id>.csv|.jsonl` when present. The state folder is
keyed by the user id, never by the run, so d_u survives rounds, runs and restarts.

The run config comes from the server: a real device (no partition-id) takes its folders
from its own node config only, so a server cannot point it at other files. Only a simulated
node, where the server and the devices are one process tree, reads them from the run config.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from pic_core.data import DataError
from pic_core.data.dataset import Dataset
from pic_core.runtime import resolve_device
from pic_core.user_crops import default_crops_file

PARTITION_ID = "partition-id"


class NodeConfigError(ValueError):
    """A device whose configuration does not say where its data or state is."""


@dataclass(frozen=True)
class NodeSettings:
    data_dir: Path
    user_id: str
    state_dir: Path  # this device's own folder
    device: torch.device
    threads: int  # torch CPU threads (0: torch's default)
    crops_file: Optional[Path] = None  # the user's own crops (pic_core.user_crops), None: no such file

    @property
    def has_scored(self) -> bool:
        """Whether the user has score-annotated crop sets (users/<user>.csv)."""
        return (self.data_dir / "users" / f"{self.user_id}.csv").is_file()

    @property
    def dataset(self) -> Dataset:
        return Dataset(self.data_dir)


def _get(key: str, node_config: Mapping[str, Any], run_config: Mapping[str, Any], default: Any = None) -> Any:
    value = node_config.get(key)
    if value is None or value == "":
        value = run_config.get(key)
    return default if value is None or value == "" else value


def simulated_user(data_dir: Path, partition_id: int, population: Optional[int]) -> str:
    """The user a simulated node plays: sorted user ids, first `population` of them."""
    users = Dataset(data_dir).user_ids
    if population:
        users = users[:population]
    if not users:
        raise DataError(f"{data_dir}: no users/*.csv for the simulated devices")
    if not 0 <= partition_id < len(users):
        raise NodeConfigError(f"partition-id {partition_id} but {data_dir} has {len(users)} users in the "
                              "population; run as many simulated nodes as users")
    return users[partition_id]


def node_settings(node_config: Mapping[str, Any], run_config: Mapping[str, Any],
                  population: Optional[int] = None) -> NodeSettings:
    """Resolve a device's settings (see the module docstring for the keys)."""
    folders = run_config if PARTITION_ID in node_config else {}  # a real device: its node config only
    data_dir = _get("data-dir", node_config, folders)
    if not data_dir:
        raise NodeConfigError("no data-dir in the node config" + (" or the run config" if folders else "")
                              + ": the device has no data")
    data_dir = Path(str(data_dir)).expanduser()
    user_id = _get("user-id", node_config, {})
    if user_id is None:
        if PARTITION_ID not in node_config:
            raise NodeConfigError("node config has neither user-id nor partition-id")
        user_id = simulated_user(data_dir, int(node_config[PARTITION_ID]), population)
    state_root = _get("state-dir", node_config, folders)
    if not state_root:
        raise NodeConfigError("no state-dir in the node config" + (" or the run config" if folders else "")
                              + ": nowhere to keep d_u")
    state_dir = Path(str(state_root)).expanduser() / str(user_id)
    device = resolve_device(str(_get("device", node_config, run_config, "auto")))
    threads = int(_get("threads", node_config, run_config, 0))
    crops = node_config.get("crops-file")  # the device's own config only: a server never points at files
    if crops:
        crops_file: Optional[Path] = Path(str(crops)).expanduser()
        if not crops_file.is_file():
            raise NodeConfigError(f"node config crops-file {crops_file}: no such file")
    else:
        crops_file = default_crops_file(data_dir, str(user_id))
    return NodeSettings(data_dir, str(user_id), state_dir, device, threads, crops_file)
