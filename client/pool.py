"""Device-pool simulation, device side: a simulated node that plays the user the server names.

Why: Flower 1.41's simulation engine polls every registered node every 0.1 s, and each poll
scans all stored messages, so round time grows with the registered nodes, not with the
devices trained per round. In a device-pool simulation only as many nodes are registered as
devices train at once in a round; the server samples users from the whole population and
names one per message (pic_core.exchange.POOL_PARTITION: the user's index in the population).

Security: a message may choose the user only on a node whose OWN node config enables the
pool (`pool = true`, set by the simulation runner next to `data-dir`, `state-dir` and
`pool-population`). The run config cannot enable it (the server writes that). A deployed
device (`flower-supernode --node-config "data-dir=... user-id=..."`) refuses such a message:
it only ever trains its own user.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional

from flwr.app import Context, Message

from pic_core.exchange import CONFIG, POOL_PARTITION

from pic_core.data.dataset import Dataset

from .settings import PARTITION_ID, NodeConfigError

POOL = "pool"
POOL_POPULATION = "pool-population"
POOL_NODE_KEYS = (POOL, POOL_POPULATION, "data-dir", "state-dir")
"""Node-config keys of a pool node (all set by the simulation runner, none taken from the run config)."""


class PoolRefused(NodeConfigError):
    """A message chose the user on a device whose own node config does not enable the pool."""


@lru_cache(maxsize=4)
def _population(users_dir: Path, modified_ns: int, population: Optional[int]) -> tuple[str, ...]:
    users = Dataset(users_dir.parent).user_ids
    return tuple(users[:population] if population else users)


def pool_user(data_dir: Path, index: int, population: Optional[int]) -> str:
    """The index-th user of the population (sorted user ids, the first `population`), like a
    partition-id. The listing is kept per process while users/ is unchanged: a pool node plays
    many users, and listing 10,000 score files per message costs a tenth of a second."""
    users_dir = Path(data_dir) / "users"
    try:
        modified = users_dir.stat().st_mtime_ns
    except OSError:
        raise NodeConfigError(f"{data_dir}: no users/ folder for the device pool") from None
    users = _population(users_dir, modified, population)
    if not 0 <= index < len(users):
        raise NodeConfigError(f"{POOL_PARTITION} {index}: the device pool's population in {data_dir} has "
                              f"{len(users)} users")
    return users[index]


def pool_enabled(node_config: Mapping[str, Any]) -> bool:
    value = node_config.get(POOL)
    return value is True or (isinstance(value, str) and value.strip().lower() in ("1", "true", "yes"))


def requested_partition(message: Message) -> Any:
    """The user index the server put in the message, or None (no pool assignment)."""
    record = message.content.config_records.get(CONFIG) if message.has_content() else None
    return None if record is None else record.get(POOL_PARTITION)


def pool_node_config(message: Message, node_config: Mapping[str, Any]) -> dict[str, Any]:
    """The node config this message runs under: unchanged without a pool assignment; on a pool
    node, the named user's (`user-id`), from the node's own data root and population."""
    requested = requested_partition(message)
    if not pool_enabled(node_config):
        if requested is not None:
            raise PoolRefused(f"the message names user #{requested} ({POOL_PARTITION}) but this device's node "
                              "config does not enable the device pool: a device trains only its own user")
        return dict(node_config)
    if requested is None:
        raise NodeConfigError(f"device-pool node: the message names no user ({POOL_PARTITION}); the server is "
                              "not running in device-pool mode")
    if isinstance(requested, bool) or not isinstance(requested, int):
        raise NodeConfigError(f"{POOL_PARTITION}: expected an integer user index, got {requested!r}")
    data_dir = node_config.get("data-dir")
    if not data_dir or not node_config.get("state-dir"):
        raise NodeConfigError("device-pool node: its node config needs data-dir and state-dir")
    population = int(node_config.get(POOL_POPULATION) or 0)
    user_id = pool_user(Path(str(data_dir)), requested, population or None)
    resolved = {k: v for k, v in node_config.items() if k not in (PARTITION_ID, POOL, POOL_POPULATION)}
    resolved["user-id"] = user_id
    return resolved


def pool_context(message: Message, context: Context, node_defaults: Mapping[str, Any]) -> Context:
    """`context` with the node config this message runs under (`node_defaults` below the node's own
    config: what the simulation runner gives its nodes). The original context is left as it is."""
    merged = {**node_defaults, **context.node_config}
    if not node_defaults and requested_partition(message) is None:
        return context  # the common case: nothing to resolve
    resolved = pool_node_config(message, merged)
    return Context(run_id=context.run_id, node_id=context.node_id, node_config=resolved, state=context.state,
                   run_config=context.run_config, series_id=context.series_id)


def pool_node_defaults(data_dir: Path, state_dir: Path, population: int) -> dict[str, Any]:
    """What the simulation runner puts in each pool node's config."""
    return {POOL: True, POOL_POPULATION: int(population), "data-dir": str(data_dir), "state-dir": str(state_dir)}

