"""The federation's parts without the simulation engine: codec, screening, strategies,
checkpoints, the device's state store and taps cache, and the ClientApp on real Messages."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from flwr.app import Array, ArrayRecord, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian, FedProx, FedTrimmedAvg

from client.app import app as client_app
from client.features import TapSampleCache, backbone_fingerprint
from client.local import train_round
from client.settings import NodeConfigError, node_settings
from client.state_store import PersonalStateStore
from fed_capture import describe, device_context, server_message
from pic_core.checkpoint import CheckpointError
from pic_core.config import ConfigError, load_config
from pic_core.data.dataset import Dataset
from pic_core.exchange import ARRAYS, METRICS, NUM_EXAMPLES, UpdateError, decode_update, encode_update, \
    upload_keys
from pic_core.model import CropScorer
from pic_core.params import BACKBONE_TAP_PREFIXES, is_backbone_tap, is_personal, shared_keys, shared_state, \
    to_numpy
from pic_core.samples import SampleCache
from pic_core.train import cached_crop_features, train_personal, train_shared
from server.checkpoint import ServerState, load_server_state, save_server_state
from server.round_log import RoundLog, read_rounds
from server.screening import screen_replies
from server.strategy import FedAvgMStats, build_strategy, restore_strategy_state, sampling, strategy_state

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread

ROOT = Path(__file__).resolve().parents[1]


def _arrays(model: CropScorer) -> dict[str, np.ndarray]:
    return to_numpy(shared_state(model))


def _moved(arrays: dict[str, np.ndarray], scale: float = 1e-2, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in arrays.items():
        if np.issubdtype(v.dtype, np.floating):
            out[k] = (v + scale * rng.standard_normal(v.shape)).astype(v.dtype)
            if k.endswith("running_var"):  # a variance stays a variance (negative ones are refused apart)
                out[k] = np.abs(out[k])
        else:
            out[k] = v + 3
    return out


# --- pic_core.exchange ---------------------------------------------------------------------

def test_delta16_round_trip_is_close_and_half_the_bytes(model):
    received = _arrays(model)
    trained = _moved(received)
    keys = upload_keys(received, freeze_backbone=False)
    update = encode_update(trained, received, keys, "delta16")
    assert all(v.dtype in (np.float16, np.int64) for v in update.values())
    assert update["backbone.stage3.0.1.num_batches_tracked"].shape == ()  # 0-d stays 0-d
    full = decode_update(update, received, "delta16")
    for k in received:
        assert full[k].dtype == received[k].dtype and full[k].shape == received[k].shape
        np.testing.assert_allclose(full[k], trained[k], atol=2e-5 if full[k].dtype == np.float32 else 0)
    float_bytes = sum(v.nbytes for v in received.values() if v.dtype == np.float32)
    assert sum(v.nbytes for v in update.values() if v.dtype == np.float16) * 2 == float_bytes


def test_frozen_backbone_uploads_heads_only_and_decode_keeps_the_rest(model):
    received = _arrays(model)
    keys = upload_keys(received, freeze_backbone=True)
    assert keys and not any(is_backbone_tap(k) or is_personal(k) for k in keys)
    assert "backbone.reduce.weight" in keys and "prior_embedding" in keys
    trained = _moved(received)
    full = decode_update(encode_update(trained, received, keys, "weights"), received, "weights")
    for k in received:
        expected = received[k] if is_backbone_tap(k) else trained[k]
        np.testing.assert_array_equal(full[k], expected)


def test_codec_refuses_personal_unknown_and_misshaped_keys(model):
    received = _arrays(model)
    with pytest.raises(UpdateError, match="PERSONAL"):
        encode_update({"personal.delta": np.zeros(4)}, received, ["personal.delta"], "delta16")
    with pytest.raises(UpdateError, match="does not"):
        decode_update({"nope": np.zeros(3, np.float16)}, received, "delta16")
    with pytest.raises(UpdateError, match="shape"):
        decode_update({"prior_embedding": np.zeros(99, np.float16)}, received, "delta16")


# --- server: screening, strategies, checkpoint, log ----------------------------------------

def _reply(update: dict, metrics: dict, node: int) -> Message:
    content = RecordDict({ARRAYS: ArrayRecord({k: Array(np.asarray(v)) for k, v in update.items()}),
                          METRICS: MetricRecord(metrics)})
    metadata = Metadata(run_id=1, message_id=f"r{node}", src_node_id=node, dst_node_id=1, reply_to_message_id="x",
                        group_id="1", created_at=0.0, ttl=60.0, message_type=MessageType.TRAIN)
    return Message(content=content, metadata=metadata)


def test_screening_rejects_nonfinite_outliers_and_malformed_and_counts_them(model):
    received = _arrays(model)
    keys = upload_keys(received, freeze_backbone=True)
    good = [encode_update(_moved(received, 1e-3, seed), received, keys, "delta16") for seed in range(4)]
    nan = dict(good[0])
    nan["prior_embedding"] = np.full_like(nan["prior_embedding"], np.nan)
    huge = encode_update(_moved(received, 10.0, 9), received, keys, "delta16")
    personal = dict(good[1], **{"personal.delta": np.zeros(4, np.float16)})
    replies = [_reply(u, {NUM_EXAMPLES: 6, "loss": 0.5}, i) for i, u in enumerate(good)]
    replies += [_reply(nan, {NUM_EXAMPLES: 6, "loss": 0.5}, 10), _reply(huge, {NUM_EXAMPLES: 6, "loss": 0.5}, 11),
                _reply(personal, {NUM_EXAMPLES: 6, "loss": 0.5}, 12), _reply(good[2], {NUM_EXAMPLES: 0}, 13),
                _reply(good[3], {NUM_EXAMPLES: 6, "loss": float("inf")}, 14)]
    result = screen_replies(replies, received, "delta16", max_update_norm=None, outlier_factor=10.0)
    assert result.counts() == {"accepted": 4, "failures": 0, "rejected_malformed": 2, "rejected_nonfinite": 2,
                               "rejected_norm": 1, "capped_examples": 0}
    accepted = result.accepted[0].content[ARRAYS]
    assert set(accepted.keys()) == set(received)  # rewritten to full weights
    assert accepted["prior_embedding"].numpy().dtype == np.float32
    tight = screen_replies([_reply(u, {NUM_EXAMPLES: 6}, i) for i, u in enumerate(good)], received, "delta16",
                           max_update_norm=1e-9, outlier_factor=0.0)
    assert tight.counts()["rejected_norm"] == 4 and not tight.accepted


@pytest.mark.parametrize("name,cls", [("fedavg", FedAvg), ("fedavgm", FedAvgMStats), ("fedprox", FedProx), ("fedadam", FedAdam),
                                      ("fedmedian", FedMedian), ("fedtrimmedavg", FedTrimmedAvg)])
def test_strategies_are_flowers_classes_with_fedpic_sampling(tiny_config, name, cls):
    fed = load_config("tiny", overrides={"federation.strategy": name,
                                                                 "federation.devices_per_round": 10,
                                                                 "federation.eval_fraction": 0.05}).federation
    plan = sampling(fed, 1000)
    strategy = build_strategy(fed, plan)
    assert type(strategy) is cls
    assert (plan.train_devices, plan.eval_devices) == (10, 50)
    assert int(1000 * strategy.fraction_train) == 10 and strategy.min_train_nodes == 10


def test_strategy_args_are_checked_against_the_flower_signature(tiny_config):
    def fed(**over):
        return load_config("tiny",
                           overrides={f"federation.{k}": v for k, v in over.items()}).federation
    plan = sampling(fed(), 4)
    assert build_strategy(fed(strategy="fedprox", strategy_args={"proximal_mu": 0.5}), plan).proximal_mu == 0.5
    with pytest.raises(ConfigError, match="strategy_args.eta: not an argument of Flower's FedAvg"):
        build_strategy(fed(strategy_args={"eta": 0.1}), plan)
    with pytest.raises(ConfigError, match="strategy_args.fraction_train: set by fedpic"):
        build_strategy(fed(strategy="fedadam", strategy_args={"fraction_train": 0.1}), plan)
    with pytest.raises(ConfigError, match="beta"):
        build_strategy(fed(strategy="fedtrimmedavg", strategy_args={"beta": 0.7}), plan)


def test_server_checkpoint_keeps_weights_round_and_fedadam_moments(tmp_path, model, tiny_config):
    arrays = _arrays(model)
    fed = load_config("tiny", overrides={"federation.strategy": "fedadam"}).federation
    strategy = build_strategy(fed, sampling(fed, 3))
    strategy.m_t = {k: np.ones_like(v, dtype=np.float64) for k, v in arrays.items()}
    strategy.v_t = {k: np.full(v.shape, 2.0) for k, v in arrays.items()}
    save_server_state(tmp_path / "c.pt", ServerState(4, arrays, "fedadam", strategy_state(strategy), {"seed": 3}))
    state = load_server_state(tmp_path / "c.pt")
    assert state.round == 4 and state.strategy == "fedadam" and state.config == {"seed": 3}
    for k, v in arrays.items():
        assert state.arrays[k].shape == v.shape and state.arrays[k].dtype == v.dtype
        np.testing.assert_array_equal(state.arrays[k], v)
    fresh = build_strategy(fed, sampling(fed, 3))
    restore_strategy_state(fresh, state.strategy_state)
    np.testing.assert_array_equal(fresh.v_t["prior_embedding"], 2.0)
    with pytest.raises(CheckpointError, match="no server checkpoint"):
        load_server_state(tmp_path / "missing.pt")


def test_fedavgm_server_momentum_survives_the_checkpoint(tmp_path, model):
    arrays = _arrays(model)
    fed = load_config("tiny", overrides={"federation.strategy": "fedavgm", "federation.strategy_args":
                                         {"server_momentum": 0.9, "server_learning_rate": 2.0}}).federation
    strategy = build_strategy(fed, sampling(fed, 3))
    assert (strategy.server_momentum, strategy.server_learning_rate) == (0.9, 2.0)
    assert strategy_state(strategy) == {}  # no momentum before the first aggregation
    strategy.momentum_vector = [np.full(v.shape, float(i)) for i, v in enumerate(arrays.values())]
    save_server_state(tmp_path / "c.pt", ServerState(2, arrays, "fedavgm", strategy_state(strategy), {}))
    fresh = build_strategy(fed, sampling(fed, 3))
    restore_strategy_state(fresh, load_server_state(tmp_path / "c.pt").strategy_state)
    assert len(fresh.momentum_vector) == len(arrays)
    for i, (restored, v) in enumerate(zip(fresh.momentum_vector, arrays.values())):
        assert restored.shape == v.shape and np.all(restored == float(i))


def test_fedavgm_extrapolates_weights_but_averages_batchnorm_statistics(model):
    received = _arrays(model)
    fed = load_config("tiny", overrides={"federation.strategy": "fedavgm", "federation.strategy_args":
                                         {"server_momentum": 0.9, "server_learning_rate": 1.0}}).federation
    strategy = build_strategy(fed, sampling(fed, 2))
    strategy.current_arrays = ArrayRecord({k: Array(np.require(v, requirements="C")) for k, v in received.items()})
    weight = next(k for k in received if k.endswith("weight") and received[k].dtype == np.float32)
    variance = next(k for k in received if k.endswith("running_var"))
    state = dict(received)
    for server_round in (1, 2):  # every device moves every float array by +0.1 (a variance shrinking by 0.5)
        moved = [{k: (v - 0.5 * v if k == variance else v + 0.1) if v.dtype == np.float32 else v
                  for k, v in state.items()} for _ in range(2)]
        arrays, _ = strategy.aggregate_train(server_round, [_reply(u, {NUM_EXAMPLES: 6}, i)
                                                            for i, u in enumerate(moved)])
        new = {k: a.numpy() for k, a in arrays.items()}
        np.testing.assert_allclose(new[variance], 0.5 * state[variance], rtol=1e-6)  # the plain average
        state = new
    # momentum: +0.1 in round 1, then +0.1 + 0.9 * 0.1 in round 2
    np.testing.assert_allclose(state[weight], received[weight] + 0.1 + 0.19, atol=1e-5)
    assert all(np.all(np.isfinite(v)) for v in state.values()) and np.all(state[variance] >= 0)


def test_round_log_drops_rounds_after_the_checkpoint(tmp_path):
    log = RoundLog(tmp_path / "rounds.jsonl")
    for r in range(4):
        log.append({"round": r, "loss": float("nan") if r == 2 else 0.1 * r, "n": np.int64(r)})
    assert [r["loss"] for r in read_rounds(log.path)][2] is None  # NaN is written as null
    log.truncate_after(1)
    assert [r["round"] for r in read_rounds(log.path)] == [0, 1]


# --- device side --------------------------------------------------------------------------

def test_node_settings_from_node_config_or_simulation_partition(toy_dataset, tmp_path):
    real = node_settings({"data-dir": str(toy_dataset), "user-id": "user2", "state-dir": str(tmp_path)}, {})
    assert real.user_id == "user2" and real.state_dir == tmp_path / "user2"
    simulated = node_settings({"partition-id": 1, "num-partitions": 3},
                              {"data-dir": str(toy_dataset), "state-dir": str(tmp_path)})
    assert simulated.user_id == Dataset(toy_dataset).user_ids[1]
    with pytest.raises(NodeConfigError, match="partition-id 5"):
        node_settings({"partition-id": 5}, {"data-dir": str(toy_dataset), "state-dir": str(tmp_path)})
    with pytest.raises(NodeConfigError, match="state-dir"):
        node_settings({"user-id": "user0", "data-dir": str(toy_dataset)}, {})


def test_state_store_survives_a_new_store_object_and_refuses_another_user(tmp_path, model):
    store = PersonalStateStore(tmp_path, "alice")
    assert store.load(model) == {} and float(model.personal.delta.detach().abs().sum()) == 0
    with torch.no_grad():
        model.personal.delta.copy_(torch.arange(4.0))
    store.save(model, [1, 2], {"state": {}, "param_groups": []})
    model.personal.reset()
    extra = PersonalStateStore(tmp_path, "alice").load(model)  # a restarted device
    assert extra["rounds"] == [1, 2]
    np.testing.assert_array_equal(model.personal.delta.detach().numpy(), np.arange(4.0))
    with pytest.raises(CheckpointError, match="state of user 'alice'"):
        PersonalStateStore(tmp_path, "bob").load(model)


def test_taps_cache_matches_the_backbone_and_is_reused_from_disk(toy_dataset, tmp_path, model):
    sets = Dataset(toy_dataset).user("user0").split("prior")[:3]
    plain = SampleCache(model.config.short_side).samples(sets)
    cache = TapSampleCache(model, tmp_path)
    tapped = cache.samples(sets)
    assert cache.computed == 3 and all(s.image is None and s.taps.dtype == torch.float16 for s in tapped)
    cache.save()
    reloaded = TapSampleCache(model, tmp_path)
    again = reloaded.samples(sets)
    assert reloaded.computed == 0
    for a, b, c in zip(cached_crop_features(model, plain), cached_crop_features(model, tapped),
                       cached_crop_features(model, again)):
        torch.testing.assert_close(a.objective, b.objective, atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(b.preference, c.preference)
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.backbone.stage3.parameters()).add_(1.0)
    assert backbone_fingerprint(other) != backbone_fingerprint(model)
    assert TapSampleCache(other, tmp_path).entries == {}  # another backbone never reads these taps


def test_train_personal_continues_its_optimizer_and_proximal_term_holds_weights(toy_dataset, model):
    samples = SampleCache(model.config.short_side).samples(Dataset(toy_dataset).user("user1").split("prior")[:3])
    first = train_personal(model, samples, epochs=2, lr=0.05, rank_weight=1.0, smooth_l1_weight=1.0)
    second = train_personal(model, samples, epochs=2, lr=0.05, rank_weight=1.0, smooth_l1_weight=1.0,
                            optimizer_state=first.optimizer_state)
    assert float(second.optimizer_state["state"][0]["step"]) == 2 * float(first.optimizer_state["state"][0]["step"])
    start = {k: v.clone() for k, v in shared_state(model).items()}

    def drift(mu: float) -> float:
        trial = copy.deepcopy(model)
        train_shared(trial, samples, epochs=1, lr=1e-2, rank_weight=1.0, smooth_l1_weight=1.0,
                     exclude_prefixes=BACKBONE_TAP_PREFIXES, proximal_mu=mu)
        return sum(float((v - start[k]).float().pow(2).sum()) for k, v in shared_state(trial).items()
                   if v.is_floating_point() and "running" not in k)
    assert drift(100.0) < 0.5 * drift(0.0)


def test_train_round_keeps_d_u_on_disk_and_leaves_the_frozen_backbone_alone(toy_dataset, tmp_path, tiny_config,
                                                                           model):
    settings = node_settings({"data-dir": str(toy_dataset), "user-id": "user0", "state-dir": str(tmp_path)}, {})
    user = Dataset(toy_dataset).user("user0")
    before = _arrays(model)
    received_again = copy.deepcopy(model)  # the next round's model: same frozen backbone
    result = train_round(model, user, tiny_config, settings, server_round=1)
    assert result.metrics["images"] == len(user.split("prior")) and result.metrics["backbone-passes"] == 6
    changed = {k for k in before if not np.array_equal(before[k], result.arrays[k])}
    assert changed and not any(is_backbone_tap(k) for k in changed)
    stored = torch.load(tmp_path / "user0" / "personal.pt", weights_only=True)
    assert stored["extra"]["rounds"] == [1] and float(stored["personal"]["personal.delta"].abs().sum()) > 0
    received_rerun = copy.deepcopy(received_again)
    again = train_round(received_again, user, tiny_config, settings, server_round=2)
    assert again.metrics["backbone-passes"] == 0  # taps came from the device's disk cache
    after_two = torch.load(tmp_path / "user0" / "personal.pt", weights_only=True)
    assert after_two["extra"]["rounds"] == [1, 2]
    # the server resumed from its round-1 checkpoint and sends round 2 again: the device starts
    # from its state before round 2, so the re-run gives the same d_u and counts the round once
    rerun = train_round(received_rerun, user, tiny_config, settings, server_round=2)
    stored = torch.load(tmp_path / "user0" / "personal.pt", weights_only=True)
    assert stored["extra"]["rounds"] == [1, 2]
    torch.testing.assert_close(stored["personal"]["personal.delta"], after_two["personal"]["personal.delta"])
    for key, value in again.arrays.items():
        np.testing.assert_allclose(rerun.arrays[key], value, atol=1e-6)


# --- privacy: the real ClientApp on real Messages -------------------------------------------

def test_clientapp_replies_carry_shared_updates_and_scalar_metrics_only(toy_dataset, tmp_path, tiny_config, model):
    """Everything a device sends: one ArrayRecord of SHARED head keys with the model's shapes
    (float16 deltas), one MetricRecord of scalars; no PERSONAL key, no d_u, no image or feature."""
    context = device_context(toy_dataset, "user1", tmp_path)
    replies = [client_app(server_message(tiny_config, model, MessageType.TRAIN, r), context) for r in (1, 2)]
    replies.append(client_app(server_message(tiny_config, model, MessageType.EVALUATE, 2), context))
    d_u = torch.load(tmp_path / "user1" / "personal.pt", weights_only=True)["personal"]["personal.delta"].numpy()
    assert np.abs(d_u).sum() > 0
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected_keys = set(upload_keys(shared_keys(model), freeze_backbone=True))
    for reply in replies:
        seen = describe(reply)
        assert not seen["configs"]
        if seen["type"] == MessageType.TRAIN:
            assert seen["record_names"] == [ARRAYS, METRICS]
            arrays = seen["arrays"][ARRAYS]
            assert set(arrays) == expected_keys
            for key, value in arrays.items():
                assert value.shape == own[key] and value.dtype in (np.float16, np.int64)
                for dtype in (np.float16, np.float32):
                    assert d_u.astype(dtype).tobytes() not in value.tobytes()
                if value.shape == d_u.shape:
                    assert not np.allclose(value.astype(np.float32), d_u, atol=1e-3)
        else:
            assert seen["record_names"] == [METRICS] and not seen["arrays"]
        (metrics,) = seen["metrics"].values()
        assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values())
        assert not any(np.isclose(v, d_u).any() for v in metrics.values() if v != 0)
        assert metrics[NUM_EXAMPLES] == len(Dataset(toy_dataset).user("user1").split(
            "prior" if seen["type"] == MessageType.TRAIN else "test"))
    assert json.loads(json.dumps({k: float(v) for k, v in describe(replies[2])["metrics"][METRICS].items()}))


def test_a_round_with_dropout_trains_the_same_weights_whatever_ran_before_it_in_the_process(toy_dataset, tmp_path):
    """A Ray worker runs devices' rounds in no fixed order; the round seeds its own dropout masks."""
    config = load_config("tiny", overrides={"model.dropout": 0.5})
    user = Dataset(toy_dataset).user("user0")
    torch.manual_seed(0)
    received = CropScorer(config.model).eval()
    results = []
    for worker_history in (1, 7):
        torch.manual_seed(worker_history)  # whatever the worker's generator went through before
        settings = node_settings({"data-dir": str(toy_dataset), "user-id": "user0",
                                  "state-dir": str(tmp_path / f"state{worker_history}")}, {})
        results.append(train_round(copy.deepcopy(received), user, config, settings, server_round=3).arrays)
    assert all(np.array_equal(results[0][k], results[1][k]) for k in results[0])
    state = torch.get_rng_state()
    torch.manual_seed(7)
    assert torch.equal(state, torch.get_rng_state())  # the round left the caller's generator as it found it
