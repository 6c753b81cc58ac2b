"""setup.py's CUDA toolkit discovery: the pitfalls from DESIGN.md (wrapper nvcc, missing headers,
version mismatch) on fake toolkits, without compiling anything."""
from __future__ import annotations

import importlib.util
import stat
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup_module_():
    spec = importlib.util.spec_from_file_location("fedpic_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # __name__ != "__main__": defines helpers, builds nothing
    return module


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def fake_toolkit(root: Path, release: str = "13.0") -> Path:
    (root / "include").mkdir(parents=True)
    (root / "include" / "cuda_runtime.h").write_text("/* fake */\n")
    executable(root / "bin" / "nvcc", f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.1'\n")
    return root


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    return monkeypatch


def test_wrapper_nvcc_is_followed_to_the_real_toolkit(setup_module_, clean_env, tmp_path) -> None:
    toolkit = fake_toolkit(tmp_path / "cuda-13.0")
    executable(tmp_path / "wrap" / "bin" / "nvcc", f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    clean_env.setenv("PATH", str(tmp_path / "wrap" / "bin"))
    assert setup_module_.find_cuda_home() == toolkit.resolve()
    assert setup_module_._toolkit_from_nvcc() == toolkit.resolve()


def test_cuda_home_without_headers_is_ignored(setup_module_, clean_env, tmp_path) -> None:
    broken = tmp_path / "broken"
    executable(broken / "bin" / "nvcc", "#!/bin/sh\n")
    clean_env.setenv("CUDA_HOME", str(broken))
    good = fake_toolkit(tmp_path / "good")
    assert setup_module_.find_cuda_home() != broken.resolve()
    clean_env.setenv("CUDA_HOME", str(good))
    assert setup_module_.find_cuda_home() == good.resolve()


def test_cuda_build_needs_a_cuda_torch_and_a_matching_major(setup_module_, clean_env, tmp_path) -> None:
    root, why = setup_module_.cuda_build_reason(None)
    assert root is None and "not a CUDA build" in why
    clean_env.setenv("CUDA_HOME", str(fake_toolkit(tmp_path / "old", release="12.4")))
    root, why = setup_module_.cuda_build_reason("13.0")
    assert root is None and "CUDA 12.x but torch was built with CUDA 13.0" in why
    clean_env.setenv("CUDA_HOME", str(fake_toolkit(tmp_path / "new", release="13.0")))
    root, why = setup_module_.cuda_build_reason("13.0")
    assert root == (tmp_path / "new").resolve(), why
