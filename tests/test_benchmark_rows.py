"""The benchmark scripts read a run's figures from the row at its main N, over every user.

results.json holds one row per (method, N): the main N on every user and the accuracy-against-N
curve's other N on a sample of `evaluation.curve_users`. The attack and privacy benchmarks once
took the first row with the method's name, which was the curve's N = 1 on 2 users.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    """A benchmark script as a module (they live outside the package); sys.path as it was after,
    so benchmarks/ never shadows a test helper of the same name (real_photos)."""
    saved = list(sys.path)
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path[:] = saved


def _row(method: str, shots: int, values: dict[str, float]) -> dict:
    return {"method": method, "shots": shots, "summary": {},
            "per_user": {user: {"acc1_5": value} for user, value in values.items()}}


def _payload(scale: float) -> dict:
    curve = {"u0": 0.0, "u1": 0.0}  # the curve sample: 2 users at N = 1 (listed first, as the evaluation does)
    main = {"u0": 0.5 * scale, "u1": 0.25 * scale, "u2": 0.75 * scale, "u3": 1.0 * scale}
    return {"main_shots": 5, "results": [
        _row("federated-generic", 1, curve), _row("federated", 1, curve),
        _row("federated-generic", 5, main), _row("federated", 5, main)]}


@pytest.mark.parametrize("script", ["attack", "privacy"])
def test_benchmarks_read_every_users_main_n_row(script):
    module = _script(script)
    payload = _payload(1.0)
    assert module.per_user(payload, "personalized" if script == "attack" else "federated") == {
        "u0": 0.5, "u1": 0.25, "u2": 0.75, "u3": 1.0}


def test_attack_drop_is_paired_over_users():
    attack = _script("attack")
    clean, arm = _payload(1.0), _payload(0.8)
    assert attack.acc(clean, "generic") == pytest.approx(0.625)
    drop = attack.paired_drop(clean, arm, "generic")
    assert drop["users"] == 4 and drop["mean"] == pytest.approx(0.125)  # 0.2 x the mean of the main row
    assert attack.paired_drop(clean, {"model_broken": True}, "generic")["mean"] == pytest.approx(0.625)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is present: the benchmark would run")
def test_gpu_benchmark_skips_cleanly_without_a_gpu(tmp_path, monkeypatch, capsys):
    """`make bench` runs every script: without CUDA the GPU one says so, writes nothing, exits 0."""
    gpu = _script("gpu")
    out = tmp_path / "gpu.json"
    monkeypatch.setattr(sys, "argv", ["gpu.py", "--out", str(out)])
    gpu.main()
    assert "no CUDA device" in capsys.readouterr().err and not out.exists()
