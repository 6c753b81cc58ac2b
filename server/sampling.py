"""Device-pool simulation, server side: sample users from the whole population, name one per message.

Flower 1.41's simulation engine polls every registered node every 0.1 s and each poll scans
all stored messages (vce_api.add_messages_to_queue -> get_message_ins), so with one node per
user a round's time grows with the population (10,000 users: 3.5x the 1,000-user round at
20 devices per round). A device-pool simulation registers only as many nodes as devices train
or evaluate in a round; the server samples that round's users here (seeded per round, like
the node sampling of a normal run) and writes each one's population index into the message
(pic_core.exchange.POOL_PARTITION). Pool nodes play that user (client/pool.py); a deployed
device refuses a message that names a user.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Optional, Union

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore.run import Run
from flwr.serverapp import Grid

from pic_core.config import ConfigError, FederationConfig
from pic_core.exchange import CONFIG, POOL_PARTITION

from .strategy import Sampling, sampling

POOL_AUTO_THRESHOLD = 2000
"""federation.device_pool auto: the pool is used above this many users."""


def use_device_pool(setting: Union[bool, str], population: int) -> bool:
    """Resolve federation.device_pool (true, false or auto) for a population."""
    if isinstance(setting, bool):
        return setting
    if setting == "auto":
        return population > POOL_AUTO_THRESHOLD
    raise ConfigError(f"federation.device_pool: must be true, false or auto, got {setting!r}")


def pool_nodes(fed: FederationConfig, population: int) -> int:
    """Simulated nodes a device pool registers: the devices one round trains. Not the evaluated
    devices: eval_fraction of a large population would register thousands of nodes (every one
    polled every 0.1 s, even with evaluation off); an evaluation runs in waves of this many."""
    return sampling(fed, population).train_devices


@dataclass(frozen=True)
class DevicePool:
    population: int  # users the server samples from (population indices 0..population-1)

    def node_plan(self, plan: Sampling, nodes: int) -> Sampling:
        """The strategy's sampling over the pool's nodes: a training round uses `train_devices` of
        them, an evaluation wave at most all of them (waves)."""
        if nodes < plan.train_devices:
            raise ConfigError(f"device pool: {nodes} nodes connected, a round needs {plan.train_devices}")
        return Sampling(nodes, plan.train_devices, min(plan.eval_devices, nodes))

    @staticmethod
    def waves(users: list[int], nodes: int) -> list[list[int]]:
        """`users` in consecutive groups of at most `nodes`: one group per send to the pool's nodes."""
        return [users[start:start + nodes] for start in range(0, len(users), max(nodes, 1))]

    def users(self, count: int, seed: int) -> list[int]:
        """`count` distinct population indices, the same for the same seed."""
        return random.Random(seed).sample(range(self.population), min(count, self.population))

    def assign(self, messages: list[Message], seed: int) -> tuple[list[Message], list[int]]:
        """The messages, each naming its own sampled user."""
        users = self.users(len(messages), seed)
        return self.name(messages, users), users

    @staticmethod
    def name(messages: list[Message], users: list[int]) -> list[Message]:
        """Message i names users[i] (a copy of the config record per message: Flower's strategies
        give every message the same record)."""
        named = []
        for message, user in zip(messages, users):
            content = RecordDict(dict(message.content.items()))
            content[CONFIG] = ConfigRecord({**dict(message.content[CONFIG]), POOL_PARTITION: user})
            metadata = message.metadata
            named.append(Message(content, metadata.dst_node_id, metadata.message_type, group_id=metadata.group_id,
                                 ttl=metadata.ttl))
        return named


class RegistrationOrderGrid(Grid):
    """The grid with its node ids in the order the nodes registered (ties by id), so the seeded
    `random.sample` of Flower's strategies picks the same devices in every run of one seed.

    Flower returns node ids as a set, and its simulation draws them from os.urandom at every
    start: the same seed sampled other users in each run (`make demo`: +6.5 to +13.5 points over
    pre-finetune for one config). Registration order is the partition order in a simulation and
    the order devices joined in a deployment. Everything else is the wrapped grid's.
    """

    def __init__(self, grid: Grid):
        self._grid = grid

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: Optional[float] = None) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> list[int]:
        return [node.node_id for node in sorted(self._grid.get_nodes(), key=_registration_key)]

    def get_nodes(self):
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: Optional[float] = None) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)


def _registration_key(node) -> tuple[float, int]:
    """(registration time in seconds, node id); nodes without a time first, by id. Parsed, not
    compared as text: isoformat() drops the fraction when it is zero."""
    stamp = getattr(node, "registered_at", "") or ""
    try:
        seconds = datetime.fromisoformat(stamp).timestamp() if stamp else float("-inf")
    except ValueError:
        seconds = float("-inf")
    return seconds, int(node.node_id)


def in_node_order(replies: list[Message], nodes: list[int]) -> list[Message]:
    """Replies sorted by their sender's place in `nodes` (registration order): the aggregate sums
    them in one order whatever order they arrived in (floating-point sums depend on the order)."""
    rank = {node: i for i, node in enumerate(nodes)}
    return sorted(replies, key=lambda m: (rank.get(m.metadata.src_node_id, len(rank)), m.metadata.src_node_id))
