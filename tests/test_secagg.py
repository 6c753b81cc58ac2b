"""SecAgg+ in Flower's real simulation engine: the same aggregate as plain FedAvg, no plain update sent."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

from conftest import make_toy_dataset
from fed_capture import CAPTURE_ENV, STATES_ENV, capture_mod, read_captures
from pic_core.config import ConfigError, load_config
from server.strategy import build_strategy, sampling

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

OVERRIDES = {"pre.epochs": 1, "federation.rounds": 1, "federation.population": 3, "federation.fraction": 1.0,
             "federation.eval_every": 0, "federation.personal_epochs": 1, "federation.refit": False,
             "federation.fp16": False, "federation.cpus_per_device": 1.0}


def test_secure_aggregation_is_fedavg_without_dp_only(tiny_config):
    fed = dataclasses.replace(tiny_config.federation, secure_aggregation=True, strategy="fedmedian")
    with pytest.raises(ConfigError, match="secure_aggregation"):
        build_strategy(fed, sampling(fed, 4))
    fed = dataclasses.replace(fed, strategy="fedavg", dp_clipping_norm=1.0, fp16=False, freeze_backbone=False)
    with pytest.raises(ConfigError, match="secure_aggregation"):
        build_strategy(fed, sampling(fed, 4))


def _simulate(root, data, secure: bool):
    from pic_core.data.dataset import Dataset
    from simulations.federated import SimulationPlan, split_population
    from simulations.simulate import run

    config = load_config("tiny", overrides={**OVERRIDES, "federation.secure_aggregation": secure})
    users, holdout = split_population(Dataset(data), config.federation.population)
    out = root / ("secure" if secure else "plain")
    pre = root / "plain" / "pre.pt"  # the second run starts from the first run's pre model
    plan = SimulationPlan(config=config, data_dir=data, out_dir=out, users=users, holdout=holdout,
                          init_model=pre if pre.exists() else None)
    os.environ.update({CAPTURE_ENV: str(out / "captured"), STATES_ENV: str(out / "devices")})
    try:
        run(plan, evaluate=False, client_mods=[capture_mod])
    finally:
        for name in (CAPTURE_ENV, STATES_ENV):
            os.environ.pop(name, None)
    return out


def test_secagg_round_matches_fedavg_and_no_device_sends_its_update_in_the_clear(tmp_path):
    data = make_toy_dataset(tmp_path / "data", users=4)
    plain = _simulate(tmp_path, data, secure=False)
    secure = _simulate(tmp_path, data, secure=True)
    a = torch.load(plain / "model.pt", map_location="cpu", weights_only=False)["state_dict"]
    b = torch.load(secure / "model.pt", map_location="cpu", weights_only=False)["state_dict"]
    start = torch.load(plain / "pre.pt", map_location="cpu", weights_only=False)["state_dict"]
    assert a.keys() == b.keys()
    moved = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())
    assert moved < 1e-3, moved  # SecAgg+ quantization step ~4e-6 per weight and device
    step = max(float((a[k].float() - start[k].float()).abs().max()) for k in a if a[k].is_floating_point())
    assert step > 100 * moved, (step, moved)  # the round moved the model far more than the two differ

    replies = [c for c in read_captures(secure / "captured") if c.get("type") == "train"]
    masked = [c for c in replies if "masked_params" in c["configs"].get("secaggplus_configs", {})]
    assert len(masked) == 3  # stage 2, one reply per device
    for reply in replies:  # secaggplus_mod empties every array record it sends
        assert all(len(arrays) == 0 for arrays in reply["arrays"].values()), reply["record_names"]
    from flwr.common import bytes_to_ndarray
    for reply in masked:
        vector = np.concatenate([bytes_to_ndarray(b).ravel().astype(np.float64)
                                 for b in reply["configs"]["secaggplus_configs"]["masked_params"]])
        spread = vector.std() / (vector.max() - vector.min())
        assert spread > 0.2, spread  # masks make it ~uniform (0.29); a quantized small delta is ~0
