"""Device-pool simulation: a few Flower nodes play the users the server samples.

Device side on real Messages (a deployed device refuses a message-chosen user; a pool node
plays it with that user's own state folder), the server's seeded sampling, and one real
Flower simulation (tiny model, 5 users, 2 pool nodes, 2 rounds).
"""
from __future__ import annotations

import pytest
import torch

from flwr.app import Context, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.app import app as deployed_app
from client.app import make_client_app
from client.pool import PoolRefused, pool_node_config, pool_node_defaults
from client.settings import NodeConfigError
from conftest import make_toy_dataset
from fed_capture import device_context, server_message
from pic_core.config import ConfigError, load_config
from pic_core.data.dataset import Dataset
from pic_core.exchange import CONFIG, FEDPIC_CONFIG, POOL_PARTITION
from server.round_log import read_rounds
from server.sampling import POOL_AUTO_THRESHOLD, DevicePool, pool_nodes, use_device_pool
from server.strategy import Sampling

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


def _naming(message, user_index):
    message.content[CONFIG][POOL_PARTITION] = user_index
    return message


def _cause_chain(error: BaseException) -> list[BaseException]:
    chain = [error]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    return chain


def test_a_deployed_device_refuses_a_user_chosen_by_the_message(toy_dataset, tmp_path, tiny_config, model):
    """A device with its own user in its node config, even with `pool` in the (server-written) run
    config, refuses to train the user a message names, and writes no state for anyone."""
    context = device_context(toy_dataset, "user1", tmp_path)
    context.run_config = {"pool": True, "pool-population": 3}
    message = _naming(server_message(tiny_config, model, MessageType.TRAIN, 1), 0)
    with pytest.raises(Exception) as raised:
        deployed_app(message, context)
    assert any(isinstance(e, PoolRefused) for e in _cause_chain(raised.value)), raised.value
    assert not list(tmp_path.iterdir())  # neither user0 (named) nor user1 (its own) trained
    with pytest.raises(PoolRefused, match="does not enable the device pool"):
        pool_node_config(message, {**context.node_config, "pool": False})
    # the same device without a pool assignment trains its own user as before
    reply = deployed_app(server_message(tiny_config, model, MessageType.TRAIN, 1), context)
    assert not reply.has_error() and [p.name for p in tmp_path.iterdir()] == ["user1"]


def test_a_pool_node_plays_the_named_user_with_that_users_own_state(toy_dataset, tmp_path, tiny_config, model):
    node = pool_node_defaults(toy_dataset, tmp_path / "devices", population=2)
    app = make_client_app({}, node=node)
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 2},
                      state=RecordDict(), run_config={})
    users = Dataset(toy_dataset).user_ids
    for server_round, index in ((1, 1), (2, 0), (3, 1)):
        reply = app(_naming(server_message(tiny_config, model, MessageType.TRAIN, server_round), index), context)
        assert not reply.has_error()
    states = {p.parent.name: torch.load(p, weights_only=True) for p in (tmp_path / "devices").glob("*/personal.pt")}
    assert set(states) == {users[0], users[1]}
    assert states[users[1]]["user_id"] == users[1] and states[users[1]]["extra"]["rounds"] == [1, 3]
    assert states[users[0]]["extra"]["rounds"] == [2]
    # outside the node's population (users[2] is held out) and without an assignment: refused
    with pytest.raises(NodeConfigError, match="pool-partition-id 2: .* has 2 users"):
        pool_node_config(_naming(server_message(tiny_config, model), 2), {**node})
    with pytest.raises(NodeConfigError, match="names no user"):
        pool_node_config(server_message(tiny_config, model), {**node})


@pytest.fixture()
def server_identity():
    """What a ServerApp process has: Flower stamps its task identity on every message it creates."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def test_server_samples_distinct_seeded_users_and_names_one_per_message(tiny_config, model, server_identity):
    pool = DevicePool(population=50)
    base = server_message(tiny_config, model)
    messages = [base.__class__(base.content, node, MessageType.TRAIN, group_id="3") for node in (11, 12, 13)]
    named, users = pool.assign(messages, seed=3)
    assert len(set(users)) == 3 and all(0 <= u < 50 for u in users)
    assert pool.assign(messages, seed=3)[1] == users and pool.assign(messages, seed=4)[1] != users
    assert [m.content[CONFIG][POOL_PARTITION] for m in named] == users
    assert [m.metadata.dst_node_id for m in named] == [11, 12, 13] and named[0].metadata.group_id == "3"
    assert POOL_PARTITION not in base.content[CONFIG] and FEDPIC_CONFIG in named[0].content[CONFIG]
    assert pool.node_plan(Sampling(50, 3, 2), nodes=3) == Sampling(3, 3, 2)
    with pytest.raises(ConfigError, match="2 nodes connected"):
        pool.node_plan(Sampling(50, 3, 2), nodes=2)
    # more evaluated users than nodes: the strategy samples all nodes, the server sends waves
    assert pool.node_plan(Sampling(50, 3, 7), nodes=3) == Sampling(3, 3, 3)
    assert DevicePool.waves([5, 1, 9, 4, 7, 2, 8], 3) == [[5, 1, 9], [4, 7, 2], [8]]


def test_device_pool_setting_auto_true_false(tiny_config):
    assert not use_device_pool("auto", POOL_AUTO_THRESHOLD) and use_device_pool("auto", POOL_AUTO_THRESHOLD + 1)
    assert use_device_pool(True, 3) and not use_device_pool(False, 10 ** 6)
    config = load_config("tiny", overrides={"federation.device_pool": True, "federation.devices_per_round": 4,
                                            "federation.eval_devices": 6, "federation.eval_fraction": 0.5})
    assert pool_nodes(config.federation, 1000) == 4  # the trained devices; evaluation goes in waves
    config.federation.devices_per_round, config.federation.eval_devices = 0, 0
    config.federation.fraction = 0.002
    assert pool_nodes(config.federation, 10_000) == 20  # not eval_fraction x 10,000
    with pytest.raises(ConfigError, match="federation.device_pool: must be one of"):
        load_config("tiny", overrides={"federation.device_pool": "sometimes"})


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pool_simulation_gives_each_sampled_user_its_own_state_and_the_usual_results(tmp_path):
    """5 users, 2 per round on 2 pool nodes (Flower's real engine), 2 rounds + evaluation of 3
    users per round in two waves (2 + 1)."""
    from simulations.experiment import read_results
    from simulations.simulate import run_simulation

    data = make_toy_dataset(tmp_path / "data", users=5)
    config = load_config("tiny", overrides={
        "pre.epochs": 1, "federation.rounds": 2, "federation.devices_per_round": 2, "federation.eval_devices": 3,
        "federation.eval_every": 1, "federation.personal_epochs": 1, "federation.population": 4,
        "federation.device_pool": True, "finetune.epochs": 2})
    out = tmp_path / "out"
    payload, results = read_results(run_simulation(config, data, out))
    rounds = read_rounds(out / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [0, 1, 2] and all(r["device_pool"] for r in rounds)
    users = Dataset(data).user_ids[:4]
    trained: dict[str, list[int]] = {}
    for record in rounds[1:]:
        assert record["population"] == 4 and record["sampled"] == record["accepted"] == 2
        assert len(set(record["pool_users"])) == 2 and all(0 <= u < 4 for u in record["pool_users"])
        assert record["eval_devices"] == 3 and record["evaluate"]["personalized-acc1_5"] is not None
        for index in record["pool_users"]:
            trained.setdefault(users[index], []).append(record["round"])
    states = {p.parent.name: torch.load(p, weights_only=True) for p in (out / "devices").glob("*/personal.pt")}
    assert set(states) == set(trained)  # each sampled user has its own state file, nobody else
    for user, state in states.items():
        assert state["user_id"] == user and state["extra"]["rounds"] == trained[user]
    assert payload["device_pool_nodes"] == 2 and payload["rounds_completed"] == 2
    rows = ("generic", "pre-finetune", "pre-finetune-du", "federated-generic", "federated", "federated-du",
            "federated-compact", "federated-stored")  # simulations/evaluation.py's rows at the main N, as in a one-node-per-user run
    assert {(r.method, len(r.per_user)) for r in results if r.shots == payload["main_shots"]} == {
        *((m, 4) for m in rows), *((f"{m}-new-devices", 1) for m in rows)}
