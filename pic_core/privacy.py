"""DP-FedAvg privacy accounting: the ε a run spends, from Google's dp-accounting RDP accountant.

Flower's DifferentialPrivacyClientSideFixedClipping (server/strategy.py) clips each device's update
to norm C and adds Gaussian noise of std z * C to the sum of the sampled updates (z * C / m to their
mean), once per round. That is the sampled Gaussian mechanism of DP-FedAvg (McMahan et al. 2018),
user-level: one device's whole update is the unit protected. The accountant composes it over the
rounds with sampling rate q = sampled devices / population. Flower samples a fixed number of
devices without replacement; the RDP bound used here is the Poisson-sampling one, the usual
approximation for DP-FedAvg, and it is stated as such in results.json.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import dp_accounting

# integer orders: the fractional ones below 2 fail to converge in dp-accounting's series for q >= 0.1
ORDERS = list(range(2, 65)) + [80, 96, 128, 256, 512, 1024]
ACCOUNTANT = f"dp-accounting {getattr(dp_accounting, '__version__', '0.6.0')} RDP, Poisson-subsampled Gaussian"


@dataclass(frozen=True)
class PrivacySpent:
    epsilon: float
    delta: float
    noise_multiplier: float
    sampling_rate: float
    rounds: int
    clipping_norm: float
    accountant: str = ACCOUNTANT
    unit: str = "device (user-level DP)"

    def as_dict(self) -> dict:
        return asdict(self)


def epsilon(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """ε of `rounds` sampled-Gaussian steps at δ (inf without noise)."""
    if not 0 < sampling_rate <= 1:
        raise ValueError(f"sampling rate {sampling_rate}: must be in (0, 1]")
    if not 0 < delta < 1:
        raise ValueError(f"delta {delta}: must be in (0, 1)")
    if noise_multiplier <= 0:
        return math.inf
    if rounds <= 0:
        return 0.0
    accountant = dp_accounting.rdp.RdpAccountant(ORDERS)
    event = dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    accountant.compose(event, rounds)
    return float(accountant.get_epsilon(delta))


def noise_for_epsilon(target: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """The smallest noise multiplier (to 1e-3) whose ε after `rounds` is at most `target`."""
    low, high = 0.05, 1.0
    while epsilon(high, sampling_rate, rounds, delta) > target:
        high *= 2
        if high > 1e4:
            raise ValueError(f"epsilon {target} is out of reach")
    while high - low > 1e-3:
        mid = (low + high) / 2
        low, high = (low, mid) if epsilon(mid, sampling_rate, rounds, delta) <= target else (mid, high)
    return high


def privacy_spent(clipping_norm: Optional[float], noise_multiplier: float, sampled: int, population: int,
                  rounds: int) -> Optional[PrivacySpent]:
    """What a DP run spent at δ = 1 / population; None when DP is off."""
    if clipping_norm is None or population <= 0 or sampled <= 0:
        return None
    delta = 1.0 / population if population > 1 else 0.5
    q = min(1.0, sampled / population)
    return PrivacySpent(epsilon(noise_multiplier, q, rounds, delta), delta, noise_multiplier, q, rounds,
                        clipping_norm)
