"""Writing `fedpic export` files: a model (with a user's d_u baked in) as one torch.export program.

The program is cropper.ScoringModule traced by torch.export: it takes the normalized image
(1, 3, H, W) and the candidate boxes (K, 4) in network-input pixels and returns the K scores.
H and W are dynamic (multiples of 32 from 64 to 8192), K is dynamic (1 to 16384); the RoI/RoD
align runs as fedpic's compiled op when it was available at export time (it has a fake
kernel for tracing) or as the pure-PyTorch ops otherwise. The file is a PT2 archive (.pt2)
with a JSON description (short side, user, fingerprint, checks) inside, so
`fedpic crop --model FILE.pt2` recognises it and needs no other file.

With `--compile` the archive also holds the program compiled ahead of time by AOTInductor
(C++ for this machine's CPU: compile where it will run). `fedpic crop` then runs the
compiled model on CPU and falls back to the exported program elsewhere. The `fast` profile
does this by itself for a plain model file and caches the result (compiled_cropper).
Loading a program that contains fedpic's compiled op needs that op built there too.
Reading these files is exported.py's job; the `fedpic export` command is fedpic/commands/crop.py.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor
from torch.export import Dim

from . import __version__
from .checkpoint import state_fingerprint
from .config import to_dict
from .exported import EXPORT_FORMAT, EXPORT_META, EXPORT_VERSION, MAX_BOXES, MAX_SIDE, ExportError, PathLike
from .geometry import grid_anchors, resized_size
from .inference import MIN_INPUT_SIDE, ScoringModule
from .model import CropScorer
from .params import shared_state

log = logging.getLogger("fedpic")

CHECK_TOLERANCE = 1e-4
"""Largest |exported - eager| score difference accepted by the check after export."""

def _example(short_side: int, landscape: bool = True) -> tuple[Tensor, Tensor]:
    """A normalized-input-shaped random image of a 3:2 photo and its grid anchors."""
    height, width = resized_size(2 * short_side, 3 * short_side, short_side)
    if not landscape:
        height, width = width, height
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, height, width, generator=generator)
    return image, torch.from_numpy(grid_anchors(height, width))


def export_program(model: CropScorer, personal: bool) -> torch.export.ExportedProgram:
    """torch.export of ScoringModule(model) on CPU with dynamic image size and box count."""
    module = ScoringModule(model, personal).eval()
    image, boxes = _example(model.config.short_side)
    h32 = Dim("h32", min=MIN_INPUT_SIDE // 32, max=MAX_SIDE // 32)
    w32 = Dim("w32", min=MIN_INPUT_SIDE // 32, max=MAX_SIDE // 32)
    count = Dim("boxes", min=1, max=MAX_BOXES)
    shapes = {"image": {2: 32 * h32, 3: 32 * w32}, "boxes": {0: count}}
    with torch.no_grad():
        return torch.export.export(module, (image, boxes), dynamic_shapes=shapes, strict=False)


def check_program(runner, model: CropScorer, personal: bool) -> float:
    """Largest score difference between `runner` (image, boxes -> scores) and the eager model
    on a portrait input (a size and box count the export did not see)."""
    module = ScoringModule(model, personal).eval()
    image, boxes = _example(model.config.short_side, landscape=False)
    boxes = boxes[: max(1, len(boxes) - 7)]
    with torch.no_grad():
        return float((module(image, boxes) - runner(image, boxes)).abs().max())


def compile_program(program: torch.export.ExportedProgram) -> list:
    """AOTInductor: the program as C++ compiled for this machine (the files to package)."""
    return torch._inductor.aot_compile(program.module(), program.example_inputs[0],
                                       options={"aot_inductor.package": True})


def _write_archive(path: Path, program: torch.export.ExportedProgram, meta: dict,
                   compiled: Optional[list]) -> None:
    """Atomically write the PT2 archive: program, optional compiled model, description."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.pt2", dir=path.parent)
    os.close(fd)
    extra = {EXPORT_META: json.dumps(meta, sort_keys=True)}
    try:
        if compiled is None:
            torch.export.save(program, tmp, extra_files=extra)
        else:
            from torch.export.pt2_archive._package import package_pt2  # the archive torch.export.save writes

            package_pt2(tmp, exported_programs={"model": program}, aoti_files={"model": compiled},
                        extra_files=extra)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_model(model: CropScorer, path: PathLike, personal: bool, user_id: Optional[str] = None,
                 check: bool = True, compile: bool = False) -> dict:
    """Export `model` (and its d_u when `personal`) to `path`; returns the stored description.

    check: compare the program (and the compiled model) with the eager model on an input
    size the export did not see; a difference above CHECK_TOLERANCE is an ExportError.
    """
    model = model.to("cpu").eval()
    start = time.perf_counter()
    try:
        program = export_program(model, personal)
    except Exception as exc:  # torch raises many types when tracing fails; report which one
        raise ExportError(f"torch.export failed: {type(exc).__name__}: {exc}") from exc
    meta = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "fedpic_version": __version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "short_side": model.config.short_side,
        "model_config": to_dict(model.config),
        "model_fingerprint": state_fingerprint(shared_state(model)),
        "personal": personal,
        "user_id": user_id,
        "inputs": {"image": "(1, 3, H, W) float32, ImageNet-normalized; H, W multiples of 32 in "
                            f"[{MIN_INPUT_SIDE}, {MAX_SIDE}]",
                   "boxes": f"(K, 4) float32 [x1, y1, x2, y2] in input pixels, 1 <= K <= {MAX_BOXES}"},
        "align_op": "compiled" if any("fedpic" in str(n.target) for n in program.graph.nodes) else "reference",
        "compiled": compile,
    }
    if check:
        meta["check_max_abs_diff"] = _checked(check_program(program.module(), model, personal), "exported program")
    compiled = None
    if compile:
        try:
            compiled = compile_program(program)
        except Exception as exc:  # a missing C++ compiler, an unsupported op...
            raise ExportError(f"AOTInductor compilation failed: {type(exc).__name__}: {exc}") from exc
    path = Path(path)
    _write_archive(path, program, meta, compiled)
    if compile and check:
        runner = torch._inductor.aoti_load_package(str(path))
        meta["check_compiled_max_abs_diff"] = _checked(check_program(runner, model, personal), "compiled model")
    meta["seconds"] = round(time.perf_counter() - start, 2)
    return meta


def _checked(diff: float, what: str) -> float:
    if not diff <= CHECK_TOLERANCE:
        raise ExportError(f"the {what}'s scores differ from the eager model's by {diff:.3g} (> {CHECK_TOLERANCE})")
    return diff


def cache_dir() -> Path:
    """Where compiled models are kept: $FEDPIC_CACHE, else ~/.cache/fedpic."""
    return Path(os.environ.get("FEDPIC_CACHE") or Path.home() / ".cache" / "fedpic") / "compiled"


def compile_cached(model: CropScorer, personal: bool, profile_name: str) -> Path:
    """The model compiled by AOTInductor, compiled once and cached by content (weights, d_u,
    torch and fedpic versions): the path of the cached exported file."""
    digest = hashlib.sha256()
    digest.update(f"{__version__} {torch.__version__} {personal}".encode())
    digest.update(state_fingerprint(model.state_dict()).encode())
    path = cache_dir() / f"{digest.hexdigest()[:20]}.pt2"
    if not path.is_file():
        log.info("profile %s: compiling the model for this CPU (about a minute, once; cached in %s)",
                 profile_name, path.parent)
        export_model(model, path, personal, compile=True)
    return path
