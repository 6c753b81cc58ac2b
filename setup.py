"""Build script: the package metadata lives in pyproject.toml; this adds the compiled op.

Extensions (see docs/kernels.md):
  pic_core._C       C++ CPU kernels and the operator schemas; built whenever torch is importable.
  pic_core._C_cuda  CUDA kernels; built when torch is a CUDA build and a CUDA toolkit with
                    include/cuda_runtime.h and a matching major version is found.
Environment:
  FEDPIC_CUDA=0 / 1      never / always build the CUDA extension (1 fails loudly if it cannot;
                         unset, a failed CUDA compile is reported and the install goes on
                         CPU-only). A failed CPU build always fails the install.
  CUDA_HOME              toolkit root; otherwise read from the `nvcc` on PATH (following a
                         wrapper script to the real binary) or /usr/local/cuda.
  TORCH_CUDA_ARCH_LIST   GPU architectures; default below keeps the CUDA compile short.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
DEFAULT_ARCH_LIST = "7.5;8.0;9.0+PTX"
CPU_SOURCES = ["csrc/ops.cpp", "csrc/roi_rod_align_cpu.cpp"]
CUDA_SOURCES = ["csrc/cuda_module.cpp", "csrc/roi_rod_align_cuda.cu"]


def _note(message: str) -> None:
    print(f"fedpic setup: {message}", file=sys.stderr)


def _is_toolkit(root: Path) -> bool:
    return (root / "include" / "cuda_runtime.h").is_file() and (root / "bin" / "nvcc").is_file()


def _toolkit_from_nvcc() -> Path | None:
    """Toolkit root behind the `nvcc` on PATH; a wrapper script is followed to the binary it runs."""
    found = shutil.which("nvcc")
    if found is None:
        return None
    nvcc = Path(found).resolve()
    if _is_toolkit(nvcc.parent.parent):
        return nvcc.parent.parent
    try:
        text = nvcc.read_text(errors="replace") if nvcc.stat().st_size < 65536 else ""
    except OSError:
        return None
    for match in re.finditer(r"(/[^\s'\"]+)/bin/nvcc\b", text):
        root = Path(match.group(1)).resolve()
        if _is_toolkit(root):
            return root
    return None


def find_cuda_home() -> Path | None:
    """The real CUDA toolkit root, or None: CUDA_HOME/CUDA_PATH, then nvcc on PATH, then /usr/local/cuda."""
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(variable)
        if value and _is_toolkit(Path(value)):
            return Path(value).resolve()
        if value:
            _note(f"{variable}={value} has no include/cuda_runtime.h and bin/nvcc; looking elsewhere")
    from_nvcc = _toolkit_from_nvcc()
    if from_nvcc is not None:
        return from_nvcc
    default = Path("/usr/local/cuda")
    return default.resolve() if _is_toolkit(default) else None


def _toolkit_major(root: Path) -> int | None:
    try:
        text = subprocess.run([str(root / "bin" / "nvcc"), "--version"], capture_output=True, text=True,
                              timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+)\.", text)
    return int(match.group(1)) if match else None


def cuda_build_reason(torch_cuda: str | None) -> tuple[Path | None, str]:
    """(toolkit root, why) where root is None when the CUDA extension cannot be built."""
    if torch_cuda is None:
        return None, "torch is not a CUDA build"
    root = find_cuda_home()
    if root is None:
        return None, "no CUDA toolkit with include/cuda_runtime.h found (set CUDA_HOME)"
    major = _toolkit_major(root)
    if major is None:
        return None, f"cannot run {root}/bin/nvcc --version"
    if major != int(torch_cuda.split(".")[0]):
        return None, f"toolkit {root} is CUDA {major}.x but torch was built with CUDA {torch_cuda}"
    return root, f"toolkit {root} (CUDA {major}.x, torch CUDA {torch_cuda})"


def extension_modules() -> dict:
    """setup() arguments for the extensions; empty when torch is missing (pure-PyTorch fallback)."""
    try:
        import torch
    except ImportError:
        _note("torch is not importable: building without the compiled op (pure-PyTorch fallback). "
              "Install torch first, then `pip install --no-build-isolation -e .`")
        return {}
    mode = os.environ.get("FEDPIC_CUDA", "").strip()
    if mode not in ("", "0", "1"):
        raise SystemExit(f"fedpic setup: FEDPIC_CUDA must be 0 or 1, got {mode!r}")
    cuda_root, why = (None, "FEDPIC_CUDA=0") if mode == "0" else cuda_build_reason(torch.version.cuda)
    if mode == "1" and cuda_root is None:
        raise SystemExit(f"fedpic setup: FEDPIC_CUDA=1 but the CUDA extension cannot be built: {why}")
    if cuda_root is not None:
        # torch.utils.cpp_extension reads CUDA_HOME when it is imported; a wrapper nvcc on PATH
        # would otherwise make it guess the wrong root.
        os.environ["CUDA_HOME"] = str(cuda_root)
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    class FedpicBuildExtension(BuildExtension):
        """Builds the extensions; without FEDPIC_CUDA=1 a CUDA compile failure is not fatal."""

        def build_extension(self, ext) -> None:
            try:
                super().build_extension(ext)
            except Exception as exc:  # ninja / nvcc report failures as RuntimeError
                if not getattr(ext, "optional", False):
                    raise
                _note(f"the CUDA extension failed to build ({exc}); continuing CPU-only "
                      "(set FEDPIC_CUDA=1 to make this an error)")

    include = [str(CSRC)]
    modules = [CppExtension("pic_core._C", CPU_SOURCES, include_dirs=include,
                            extra_compile_args=["-O3", "-fopenmp"], extra_link_args=["-fopenmp"])]
    if cuda_root is not None:
        _note(f"building the CUDA extension with {why}, "
              f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
        cuda = CUDAExtension("pic_core._C_cuda", CUDA_SOURCES, include_dirs=include,
                             extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]})
        cuda.optional = mode != "1"  # setuptools then skips copying it when its build failed
        modules.append(cuda)
    else:
        _note(f"CPU-only build ({why})")
    return {"ext_modules": modules, "cmdclass": {"build_ext": FedpicBuildExtension}}


if __name__ == "__main__":  # also true under pip / PEP 517 (setuptools runs this file as __main__)
    setup(**extension_modules())
