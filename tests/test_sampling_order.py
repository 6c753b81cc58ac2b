"""server/sampling.py: seeded device sampling that does not depend on Flower's random node ids."""
from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from flwr.proto.node_pb2 import NodeInfo  # the record Flower's grids return
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from server.sampling import RegistrationOrderGrid, in_node_order


class NodesOnlyGrid(Grid):
    """Just enough of a grid for sampling: these nodes, as a set (as Flower's link state returns them)."""

    def __init__(self, nodes: list[NodeInfo]):
        self.nodes = nodes

    def set_run(self, run):
        raise NotImplementedError

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        raise NotImplementedError

    def get_node_ids(self):
        return {n.node_id for n in self.nodes}

    def get_nodes(self):
        return list(self.nodes)

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        raise NotImplementedError


def registered(ids: list[int]) -> list[NodeInfo]:
    """Nodes registered one microsecond apart in the order given (the first at a whole second,
    where isoformat() drops the fraction)."""
    return [NodeInfo(node_id=node, registered_at=f"2026-12-04T11:00:00{'' if i == 0 else f'.{i:06d}'}+00:00")
            for i, node in enumerate(ids)]


def test_seeded_sampling_picks_the_same_partitions_whatever_ids_flower_drew():
    picked = []
    for draw in range(5):  # five starts: other random ids for partitions 0..19, registered in order
        rng = random.Random(draw)
        ids = [rng.getrandbits(63) for _ in range(20)]
        grid = RegistrationOrderGrid(NodesOnlyGrid(registered(ids)))
        assert grid.get_node_ids() == ids  # registration order, not the set's
        random.seed(1234)
        sampled, _ = sample_nodes(grid, 1, 8)
        picked.append(sorted(ids.index(node) for node in sampled))
    assert all(p == picked[0] for p in picked)
    # without the wrapper the same seed picks other partitions in some start (set order follows the ids)
    unordered = []
    for draw in range(5):
        rng = random.Random(draw)
        ids = [rng.getrandbits(63) for _ in range(20)]
        random.seed(1234)
        sampled, _ = sample_nodes(NodesOnlyGrid(registered(ids)), 1, 8)
        unordered.append(sorted(ids.index(node) for node in sampled))
    assert any(p != unordered[0] for p in unordered)


def test_replies_are_aggregated_in_registration_order_whatever_order_they_arrived_in():
    nodes = [30, 10, 20]
    replies = [SimpleNamespace(metadata=SimpleNamespace(src_node_id=node)) for node in (20, 30, 10, 99)]  # senders
    assert [m.metadata.src_node_id for m in in_node_order(replies, nodes)] == [30, 10, 20, 99]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_simulations_of_one_seed_train_the_same_devices(tmp_path):
    """The real Flower simulation, twice: 2 of 6 devices a round; the same per-round losses."""
    from conftest import make_toy_dataset
    from pic_core.config import load_config
    from pic_core.data.dataset import Dataset
    from server.round_log import read_rounds
    from simulations.federated import SimulationPlan, split_population
    from simulations.simulate import run

    data = make_toy_dataset(tmp_path / "data", users=6)
    config = load_config("tiny", overrides={"pre.epochs": 1, "federation.rounds": 2, "federation.population": 6,
                                            "federation.devices_per_round": 2, "federation.eval_every": 0,
                                            "federation.personal_epochs": 1, "federation.refit": False,
                                            "federation.cpus_per_device": 1.0})
    users, holdout = split_population(Dataset(data), config.federation.population)
    losses = []
    for name in ("a", "b"):
        run(SimulationPlan(config=config, data_dir=data, out_dir=tmp_path / name, users=users, holdout=holdout),
            evaluate=False)
        rounds = [r for r in read_rounds(tmp_path / name / "rounds.jsonl") if r["round"] > 0]
        losses.append([(r["train"]["loss-personal"], r["train"]["loss-shared"]) for r in rounds])
    assert len(losses[0]) == 2 and losses[0] == losses[1]
