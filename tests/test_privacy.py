"""DP-FedAvg accounting: ε from dp-accounting, in the round log, results.json and the report."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest

from pic_core.privacy import epsilon, noise_for_epsilon, privacy_spent
from simulations.federated import privacy_summary
from simulations.report import build_report


def test_epsilon_of_one_full_batch_gaussian_step_is_within_the_classical_rdp_bound():
    """q = 1: RDP of the Gaussian mechanism is α / (2 z²); the accountant's conversion is at least as tight."""
    z, rounds, delta = 2.0, 5, 1e-3
    classical = min(rounds * a / (2 * z * z) + math.log(1 / delta) / (a - 1) for a in range(2, 200))
    eps = epsilon(z, 1.0, rounds, delta)
    assert 0.6 * classical < eps <= classical + 1e-9


def test_epsilon_grows_with_rounds_and_sampling_and_falls_with_noise():
    base = epsilon(1.0, 0.2, 10, 0.01)
    assert epsilon(1.0, 0.2, 20, 0.01) > base
    assert epsilon(1.0, 0.4, 10, 0.01) > base
    assert epsilon(2.0, 0.2, 10, 0.01) < base
    assert epsilon(0.0, 0.2, 10, 0.01) == math.inf
    with pytest.raises(ValueError, match="sampling rate"):
        epsilon(1.0, 0.0, 10, 0.01)


@pytest.mark.parametrize("target", [1.0, 4.0, 8.0])
def test_noise_for_epsilon_meets_the_target(target):
    z = noise_for_epsilon(target, 0.5, 10, 0.1)
    assert epsilon(z, 0.5, 10, 0.1) <= target
    assert epsilon(z - 0.01, 0.5, 10, 0.1) > target * 0.97


def test_privacy_spent_uses_delta_one_over_devices_and_is_none_without_dp():
    assert privacy_spent(None, 1.0, 5, 10, 3) is None
    spent = privacy_spent(0.5, 1.2, 5, 20, 3)
    assert spent.delta == pytest.approx(1 / 20) and spent.sampling_rate == pytest.approx(0.25)
    assert spent.epsilon == pytest.approx(epsilon(1.2, 0.25, 3, 1 / 20))


def test_results_and_report_state_epsilon_for_a_dp_run(tiny_config, tmp_path):
    rounds = [{"round": 0, "population": 10}] + [{"round": r, "sampled": 4, "population": 10} for r in (1, 2, 3)]
    assert privacy_summary(tiny_config, rounds) is None
    fed = dataclasses.replace(tiny_config.federation, dp_clipping_norm=0.5, dp_noise_multiplier=1.5)
    summary = privacy_summary(dataclasses.replace(tiny_config, federation=fed), rounds)
    assert summary["rounds"] == 3 and summary["sampling_rate"] == pytest.approx(0.4)
    assert summary["epsilon"] == pytest.approx(epsilon(1.5, 0.4, 3, 0.1))
    (tmp_path / "results.json").write_text(json.dumps({"format": "fedpic-results", "privacy": summary}))
    (tmp_path / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    report = build_report(tmp_path).read_text()
    assert "## Privacy (DP-FedAvg)" in report
    assert f"| {summary['epsilon']:.2f} | 0.1 | 1.5 | 0.400 | 3 | 0.5 |" in report


def test_noised_batchnorm_variances_are_floored_and_other_keys_untouched():
    import numpy as np

    from server.loop import _valid_variances

    arrays = {"bn.running_var": np.array([-0.3, 0.5], np.float32), "conv.weight": np.array([-0.3], np.float32)}
    out = _valid_variances(arrays)
    assert out["bn.running_var"].tolist() == pytest.approx([1e-3, 0.5])
    assert out["conv.weight"].tolist() == pytest.approx([-0.3]) and out["bn.running_var"].dtype == np.float32
