"""Baselines and the centralized experiment on a tiny synthetic population (tiny config)."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pic_core.config import Config
from pic_core.data.dataset import Dataset
from pic_core.data.synthetic import PopulationSpec, generate
from pic_core.params import load_personal, personal_state
from pic_core.protocol import PopulationResult, personalize_user, pretrain_sets
from pic_core.samples import SampleCache
from pic_core.train import cached_crop_features, predict
from simulations.baselines import (METHODS, LocalOnlySettings, evaluate_oracle, load_users, objective_only,
                                   train_generic, train_local_only, train_prior_model)
from simulations.experiment import RESULTS_FILE, read_results, results_payload, run_centralized, write_results


def make_population(root: Path, users: int = 3, shared: bool = False, prior: int = 2, train: int = 2,
                    test: int = 1) -> Path:
    """A synthetic population small enough for unit tests (users take families round-robin)."""
    generate(PopulationSpec(users=users, prior=prior, train=train, test=test, probe=3, shared=shared, seed=3),
             root, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def population(tmp_path_factory) -> Path:
    return make_population(tmp_path_factory.mktemp("pop"))


def _fast(config: Config) -> Config:
    config = copy.deepcopy(config)
    config.pre.epochs = 1
    config.prior.epochs = 1
    return config


def _comparable(payload: dict) -> dict:
    return {k: v for k, v in payload.items() if k not in ("created", "timing", "train")}


def test_centralized_run_is_deterministic(population, tiny_config, tmp_path):
    config = _fast(tiny_config)
    local = LocalOnlySettings(epochs=1)
    first = run_centralized(population, config, tmp_path / "a", shots=(1, 2), local=local)
    second = run_centralized(population, config, tmp_path / "b", shots=(1, 2), local=local)
    assert _comparable(first) == _comparable(second)
    methods = {(r["method"], r["shots"]) for r in first["results"]}
    assert methods == {(m, n) for m in METHODS for n in (1, 2)}
    for name in ("pre.pt", "prior.pt", "gallery.json", RESULTS_FILE, "user_states/n1/u000.pt"):
        assert (tmp_path / "a" / name).is_file(), name
    # the results file on disk is strict JSON and reads back to the same per-user figures
    json.loads((tmp_path / "a" / RESULTS_FILE).read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    _, results = read_results(tmp_path / "a" / RESULTS_FILE)
    assert [r.as_dict()["summary"] for r in results] == [r["summary"] for r in first["results"]]
    centralized = {r["shots"]: r for r in first["results"] if r["method"] == "centralized"}
    assert set(centralized[1]["per_user"]) == {"u000", "u001", "u002"}


def test_oracle_scores_one(population):
    result = evaluate_oracle(load_users(Dataset(population)), 5)
    assert len(result.per_user) == 3
    for metrics in result.per_user.values():
        for key in ("acc1_5", "acc_5", "wacc_5", "acc_10", "srcc", "pcc"):
            assert metrics[key] == pytest.approx(1.0), key


def test_results_round_trip_with_missing_values(tmp_path):
    result = PopulationResult("centralized", 5, {"a": {"acc1_5": 1.0, "srcc": math.nan},
                                                 "b": {"acc1_5": 0.0, "srcc": 0.5}})
    path = write_results(tmp_path / "r.json", results_payload([result], kind="test", data_dir="somewhere"))
    text = path.read_text()
    assert "NaN" not in text and '"srcc": null' in text
    payload, (back,) = read_results(path)
    assert payload["methods"] == {"centralized": "centralized PIC (pre -> prior -> finetune)"}
    assert back.method == "centralized" and back.shots == 5
    assert math.isnan(back.per_user["a"]["srcc"])
    assert back.summary() == result.summary()
    assert back.summary()["srcc"]["users"] == 1


def test_read_results_rejects_other_files(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="x.json.*fedpic-results"):
        read_results(tmp_path / "x.json")
    with pytest.raises(ValueError, match="per_user"):
        PopulationResult.from_dict({"method": "m", "shots": 5}, "here")


def test_pre_stage_never_sees_test_images(population):
    dataset = Dataset(population)
    users = load_users(dataset)
    test_names = {c.name for u in users for c in u.split("test")}
    kept = pretrain_sets(dataset.generic(), users)
    assert test_names and not test_names & {c.name for c in kept}
    assert len(kept) == len(dataset.generic()) - len(test_names)


def test_generic_is_the_objective_score(population, tiny_config):
    users = load_users(Dataset(population))
    cache = SampleCache(tiny_config.model.short_side)
    model, _ = train_generic(Dataset(population), users, _fast(tiny_config), cache)
    samples = cache.samples(users[0].split("test"))
    objective = [f.objective.numpy() for f in cached_crop_features(model, samples)]
    generic = objective_only(model)
    for personal in (False, True):
        for got, want in zip(predict(generic, samples, personal=personal), objective):
            np.testing.assert_allclose(got, want, rtol=1e-6)
    # the model with its untrained subjective branch would not score like that
    assert not all(np.allclose(a, b) for a, b in zip(predict(model, samples, personal=False), objective))


def test_local_only_model_does_not_depend_on_other_users(population, tiny_config):
    users = load_users(Dataset(population))
    cache = SampleCache(tiny_config.model.short_side)
    settings = LocalOnlySettings(epochs=2)
    alone = train_local_only(users[1], 2, tiny_config, settings, cache)
    train_local_only(users[0], 2, tiny_config, settings, cache)
    after = train_local_only(users[1], 2, tiny_config, settings, cache)
    for (name, a), b in zip(alone.state_dict().items(), after.state_dict().values()):
        assert torch.equal(a, b), name
    other = train_local_only(users[0], 2, tiny_config, settings, cache)
    assert any(not torch.equal(a, b) for a, b in zip(other.parameters(), alone.parameters()))


def test_bad_arguments_are_named(population, tiny_config, tmp_path):
    with pytest.raises(ValueError, match="epochs"):
        LocalOnlySettings(epochs=0)
    with pytest.raises(ValueError, match="unknown methods"):
        run_centralized(population, tiny_config, tmp_path, methods=("generic", "magic"))
    with pytest.raises(ValueError, match="shots"):
        run_centralized(population, tiny_config, tmp_path, shots=(0,))


def test_personalization_comes_only_from_the_personal_state(tmp_path, tiny_config):
    """Two users, the very same photos, different tastes: their rankings differ after
    personalization, and swapping their personal states (d_u and crop-head offsets) swaps the
    rankings (the model has no user input)."""
    root = make_population(tmp_path / "shared", users=2, shared=True, prior=3, train=3, test=2)
    dataset = Dataset(root)
    first, second = load_users(dataset)
    assert [c.name for c in first.split("test")] == [c.name for c in second.split("test")]
    assert not np.allclose(first.split("test")[0].scores, second.split("test")[0].scores)
    config = copy.deepcopy(tiny_config)
    config.finetune.epochs = 40
    cache = SampleCache(config.model.short_side)
    pre, _ = train_generic(dataset, [first, second], config, cache)
    prior, _ = train_prior_model(pre, [first, second], config, cache)
    model_a = personalize_user(prior, first, 3, config, cache)
    model_b = personalize_user(prior, second, 3, config, cache)
    shared_a = {k: v for k, v in model_a.state_dict().items() if not k.startswith("personal.")}
    for key, value in model_b.state_dict().items():
        if not key.startswith("personal."):
            assert torch.equal(value, shared_a[key]), f"{key}: fast personalization changed a shared weight"
    assert not torch.allclose(model_a.personal.delta, model_b.personal.delta)

    samples = cache.samples(first.split("test"))

    def order(model) -> list[np.ndarray]:
        return [np.argsort(-p, kind="stable") for p in predict(model, samples)]

    ranks_a, ranks_b = order(model_a), order(model_b)
    assert any(not np.array_equal(a, b) for a, b in zip(ranks_a, ranks_b)), "personalization changed nothing"

    state_a = personal_state(model_a)  # d_u and the crop-head offsets: all a user's own
    load_personal(model_a, personal_state(model_b))
    load_personal(model_b, state_a)
    for got, want in zip(order(model_a), ranks_b):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(order(model_b), ranks_a):
        np.testing.assert_array_equal(got, want)
