"""simulations/evaluation.py: every method row on the same users, the curve sample, paired gains,
and the report's plots of them (tiny config, a 4-user synthetic population, no Flower)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from pic_core.config import ConfigError, load_config
from pic_core.data.dataset import Dataset
from pic_core.metrics import mean_ci
from pic_core.params import personal_state
from pic_core.samples import SampleCache
from simulations.baselines import load_users, train_generic, train_prior_model
from simulations.evaluation import (BackboneCaches, compact_state, curve_sample, du_only, evaluate_rows, objective_only,
                                    oracle_row, pre_rows, row_label, shared_rows, short_label)
from simulations.experiment import read_results, run_centralized
from simulations.report import REPORT_FILE, build_report
from test_baselines import make_population

ROWS = ("generic", "pre-finetune", "pre-finetune-du", "prior", "centralized", "centralized-du", "centralized-compact",
        "oracle")


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """4 users with 3 train images each; tiny config, curve N = 1, 3 on 2 users, main N = 2."""
    data = make_population(tmp_path_factory.mktemp("eval") / "data", users=4, train=3)
    config = load_config("tiny", overrides={"pre.epochs": 1, "prior.epochs": 1, "evaluation.shots": [1, 3],
                                            "evaluation.curve_users": 2})
    dataset = Dataset(data)
    users = load_users(dataset)
    cache = SampleCache(config.model.short_side)
    pre, _ = train_generic(dataset, users, config, cache)
    prior, _ = train_prior_model(pre, users, config, cache)
    return {"data": data, "config": config, "users": users, "cache": cache, "pre": pre, "prior": prior}


@pytest.fixture(scope="module")
def evaluation(setting):
    config, cache = setting["config"], setting["cache"]
    states: dict[tuple[str, int, str], dict] = {}

    def hook_for(method: str, n: int):
        def keep(user, scorer):
            states[(method, n, user.user_id)] = {k: v.clone() for k, v in personal_state(scorer).items()}
        return keep if method in ("pre-finetune", "pre-finetune-du", "centralized-compact") else None

    rows = (pre_rows(setting["pre"], config, cache) + shared_rows(setting["prior"], "centralized", config, cache)
            + [oracle_row()])
    return evaluate_rows(rows, setting["users"], config, [2], hook_for=hook_for), states


def test_every_row_at_the_main_n_on_every_user_and_the_curve_on_the_sample(setting, evaluation):
    result, _ = evaluation
    everyone = sorted(u.user_id for u in setting["users"])
    sample = result.evaluated["samples"]["population-curve"]["users"]
    assert len(sample) == 2 and set(sample) < set(everyone)
    assert result.main_shots == 2
    assert result.evaluated["samples"]["population-curve"]["shots"] == [1, 2, 3]
    found = {(r.method, r.shots): sorted(r.per_user) for r in result.results}
    for method in ROWS:
        assert found[(method, 2)] == everyone, method
        for n in (1, 3):
            assert found[(method, n)] == sorted(sample), (method, n)
            assert result.evaluated["rows"][f"{method}@{n}"] == "population-curve"
        assert result.evaluated["rows"][f"{method}@2"] == "population"
    by_key = {(r.method, r.shots): r for r in result.results}
    # rows that do not depend on N: the same figures for the same user at every N
    for user in sample:
        assert by_key[("generic", 1)].per_user[user] == by_key[("generic", 2)].per_user[user]
    # a personalized row at the main N is the same computation as on the curve sample
    assert by_key[("oracle", 2)].summary()["acc1_5"]["mean"] == 1.0


def test_gains_are_paired_on_the_same_users(evaluation):
    result, _ = evaluation
    by_key = {(r.method, r.shots): r for r in result.results}
    for base in ("pre-finetune", "generic"):
        for n in (1, 2, 3):
            gain = result.gains[base][f"centralized@{n}"]
            better, worse = by_key[("centralized", n)].per_user, by_key[(base, n)].per_user
            assert set(better) == set(worse)
            diffs = [better[u]["acc1_5"] - worse[u]["acc1_5"] for u in sorted(better)]
            mean, half = mean_ci(diffs)
            assert gain["users"] == len(diffs) and gain["mean"] == pytest.approx(mean)
            assert gain["ci95"] == pytest.approx(half) and gain["low"] == pytest.approx(mean - half)
            assert gain["better"] + gain["same"] + gain["worse"] == len(diffs)
    assert "pre-finetune@2" not in result.gains["pre-finetune"]  # no row is compared with itself
    assert not any(key.startswith("oracle") for entries in result.gains.values() for key in entries)


def test_du_only_rows_keep_d_u_alone_and_pre_finetune_is_the_same_path(setting, evaluation):
    _, states = evaluation
    user = setting["users"][0].user_id
    full, du = states[("pre-finetune", 2, user)], states[("pre-finetune-du", 2, user)]
    offsets = [k for k in du if k.startswith("personal.offsets.")]
    assert offsets, "the tiny model has personal crop-head offsets"
    assert all(not du[k].any() for k in offsets)  # d_u-only: the offsets never move
    assert du["personal.delta"].abs().sum() > 0
    assert any(full[k].any() for k in offsets)  # the full few-shot path trains them
    assert du_only(setting["config"]).finetune.head_lr == 0.0
    assert setting["config"].finetune.head_lr > 0  # the original config is left alone


def test_compact_rows_fit_d_u_and_the_objective_readout_only(setting, evaluation):
    _, states = evaluation
    compact = states[("centralized-compact", 2, setting["users"][0].user_id)]
    readout = ("personal.offsets.objective_out__", "personal.offsets.objective_trunk__4__")
    moved = {k for k, v in compact.items() if k.startswith("personal.offsets.") and v.any()}
    assert moved and all(k.startswith(readout) for k in moved)  # the rest of the 1.1 M-float head stays at 0
    assert {k.split(".")[-1] for k in moved} >= {"objective_out__weight", "objective_trunk__4__weight"}
    assert compact["personal.delta"].abs().sum() > 0
    feature_dim, embed_dim = setting["config"].model.feature_dim, setting["config"].model.embed_dim
    personal = setting["prior"].personal
    floats = personal.delta.numel() + sum(p.numel() for p in personal.offset_parameters("compact"))
    assert floats == embed_dim + 3 * feature_dim + 1  # d_u, readout w + b, BN w + b
    small = compact_state(setting["config"]).finetune
    assert small.offsets == "compact" and small.head_lr > 0 and setting["config"].finetune.offsets == "all"


def test_rows_on_backbone_taps_score_exactly_as_on_images_with_one_backbone_pass_per_image(setting, evaluation):
    config, users, pre = setting["config"], setting["users"], setting["pre"]
    caches = BackboneCaches(config, setting["cache"])
    head_moved = copy.deepcopy(pre)
    with torch.no_grad():
        head_moved.prior_embedding.add_(0.5)  # what a federation with freeze_backbone changes: not the backbone
    assert caches(pre) is caches(head_moved) is caches(objective_only(pre))
    rows = pre_rows(pre, config, caches(pre)) + shared_rows(setting["prior"], "centralized", config,
                                                            caches(setting["prior"]))
    on_taps = {(r.method, r.shots): r.per_user for r in evaluate_rows(rows, users, config, [2]).results}
    plain, _ = evaluation
    for result in plain.results:
        if result.method != "oracle":
            assert on_taps[(result.method, result.shots)] == result.per_user, (result.method, result.shots)
    curve = {u.user_id for u in curve_sample(users, config.evaluation.curve_users)}  # N = 3 there, else N <= 2
    images = {c.name for u in users for c in u.split("train")[:3 if u.user_id in curve else 2] + u.split("test")}
    assert caches(pre).computed == len(images)  # every row and N, yet each image through the backbone once
    full = copy.deepcopy(config)
    full.finetune.mode = "full"  # trains the backbone: taps would freeze it
    assert BackboneCaches(full, setting["cache"])(pre) is setting["cache"]


def test_curve_sample_is_spread_and_stable():
    class U:
        def __init__(self, uid):
            self.user_id = uid
    users = [U(f"u{i:02d}") for i in range(10)]
    assert [u.user_id for u in curve_sample(users[::-1], 4)] == ["u00", "u02", "u05", "u07"]
    assert len(curve_sample(users, 0)) == 10 and len(curve_sample(users, 50)) == 10


def test_bad_evaluation_settings_name_the_field(setting):
    config = copy.deepcopy(setting["config"])
    config.evaluation.shots = [0, 5]
    with pytest.raises(ConfigError, match=r"evaluation\.shots"):
        evaluate_rows([oracle_row()], setting["users"], config, [2])
    with pytest.raises(ConfigError, match=r"evaluation\.curve_users"):
        load_config("tiny", overrides={"evaluation.curve_users": "many"})


def test_labels_are_readable():
    assert short_label("federated-du") == "federated PIC, d_u only"
    assert "never" not in row_label("pre-finetune") and "few-shot" in row_label("pre-finetune")
    assert short_label("federated-new-devices") == "federated PIC [new devices]"
    assert short_label("federated-generic-new-devices") == "federated prior (d_u=0) [new devices]"


def test_baselines_results_and_report_show_the_rows_the_curve_and_the_gains(setting, tmp_path):
    config = copy.deepcopy(setting["config"])
    payload = run_centralized(setting["data"], config, tmp_path / "run", shots=(2,),
                              methods=("generic", "pre-finetune", "pre-finetune-du", "centralized", "centralized-du"))
    assert payload["main_shots"] == 2 and payload["gains"]["pre-finetune"]["centralized@2"]["users"] == 4
    _, results = read_results(tmp_path / "run" / "results.json")
    assert {(r.method, r.shots) for r in results} == {(m, n) for m in ("generic", "pre-finetune", "pre-finetune-du",
                                                                        "centralized", "centralized-du")
                                                      for n in (1, 2, 3)}
    text = build_report(tmp_path / "run").read_text()
    assert "### Gain over pre-finetune" in text and "| centralized | 2 | pre-finetune |" in text
    assert "| centralized-du | 3 | pre-finetune |" in text  # curve N: gains on the curve sample
    assert "curve sample of 2 users" in text
    figures = Path(tmp_path / "run" / "figures")
    for name in ("accuracy_vs_shots.png", "gain_vs_shots.png"):
        assert (figures / name).stat().st_size > 5000, name
        assert f"figures/{name}" in text
    assert (tmp_path / "run" / REPORT_FILE).is_file()
    assert torch.load(tmp_path / "run" / "user_states" / "n2" / "u000.pt", weights_only=False)["user_id"] == "u000"


def test_the_simulation_log_prints_the_target_gains_only():
    from simulations.simulate import _printed_gain

    assert _printed_gain("federated", "generic") and _printed_gain("federated-new-devices", "generic")
    assert not _printed_gain("pre-finetune", "generic") and not _printed_gain("federated-compact", "generic")
    for method in ("federated", "federated-du", "federated-compact", "federated-stored", "pre-finetune-du"):
        assert _printed_gain(method, "pre-finetune"), method
    assert not _printed_gain("generic", "pre-finetune") and not _printed_gain("federated-generic", "pre-finetune")
