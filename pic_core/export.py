"""`fedpic export`: a model (with a user's d_u baked in) as one torch.export program.

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
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor
from torch.export import Dim

from . import __version__
from .checkpoint import load_model, load_user_state, state_fingerprint
from .config import to_dict
from .cropper import MIN_INPUT_SIDE, Cropper, Profile, ScoringModule
from .geometry import grid_anchors, resized_size
from .model import CropScorer
from .params import shared_state

log = logging.getLogger("fedpic")

EXPORT_META = "fedpic_export.json"
EXPORT_FORMAT = "fedpic-exported"
EXPORT_VERSION = 1
MAX_SIDE = 8192
MAX_BOXES = 16384
CHECK_TOLERANCE = 1e-4
"""Largest |exported - eager| score difference accepted by the check after export."""

PathLike = Union[str, Path]


class ExportError(ValueError):
    """A model that could not be exported, or an exported file that cannot be used."""


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


def _archive_names(path: Path) -> list[str]:
    if not path.is_file() or not zipfile.is_zipfile(path):
        return []
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()


def is_exported_file(path: PathLike) -> bool:
    """Whether `path` is a PT2 archive written by `fedpic export` (by content)."""
    return any(name.endswith(f"/extra/{EXPORT_META}") for name in _archive_names(Path(path)))


def read_export_meta(path: PathLike) -> dict:
    """The JSON description inside an exported file (without loading the program)."""
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        name = next((n for n in archive.namelist() if n.endswith(f"/extra/{EXPORT_META}")), None)
        if name is None:
            raise ExportError(f"{path}: not written by `fedpic export` (no {EXPORT_META} inside)")
        meta = json.loads(archive.read(name))
    if meta.get("format") != EXPORT_FORMAT or meta.get("format_version") != EXPORT_VERSION:
        raise ExportError(f"{path}: not a {EXPORT_FORMAT} v{EXPORT_VERSION} file (found {meta.get('format')} "
                          f"v{meta.get('format_version')})")
    return meta


def has_compiled_model(path: PathLike) -> bool:
    return any("/data/aotinductor/" in name and name.endswith(".so") for name in _archive_names(Path(path)))


class ExportedBackend:
    """Calls a loaded program after checking the input sizes its dynamic shapes allow."""

    def __init__(self, module, path: Path):
        self.module = module
        self.path = path

    def __call__(self, image: Tensor, boxes: Tensor) -> Tensor:
        height, width = image.shape[-2:]
        if not (MIN_INPUT_SIDE <= height <= MAX_SIDE and MIN_INPUT_SIDE <= width <= MAX_SIDE
                and height % 32 == 0 and width % 32 == 0 and 1 <= boxes.shape[0] <= MAX_BOXES):
            raise ExportError(f"{self.path}: input {height}x{width} with {boxes.shape[0]} boxes is outside what "
                              f"the exported program accepts (sides multiples of 32 in [{MIN_INPUT_SIDE}, "
                              f"{MAX_SIDE}], 1..{MAX_BOXES} boxes)")
        return self.module(image, boxes)


def load_exported(path: PathLike, device: Union[str, torch.device] = "cpu") -> Cropper:
    """A Cropper running an exported file: its compiled model on CPU when it has one, else the
    exported program (the device's fedpic op must be built when the program uses it). Inputs
    stay contiguous NCHW, the layout the program was traced with."""
    from . import ops  # noqa: F401  registers torch.ops.fedpic.* when the extension is built

    path = Path(path)
    meta = read_export_meta(path)
    device = torch.device(device)
    who = f"user {meta['user_id']}" if meta.get("personal") else "generic"
    if device.type == "cpu" and has_compiled_model(path):
        try:
            runner = torch._inductor.aoti_load_package(str(path))
        except Exception as exc:  # compiled elsewhere, or for another torch: the program still works
            log.warning("%s: cannot load the compiled model (%s: %s); running the exported program",
                        path, type(exc).__name__, exc)
        else:
            return Cropper(ExportedBackend(runner, path), int(meta["short_side"]), device,
                           description=f"compiled ({who}, align {meta.get('align_op')})")
    try:
        program = torch.export.load(path)
    except Exception as exc:  # corrupt archive, unknown op, newer torch format...
        raise ExportError(f"{path}: cannot load the exported program ({type(exc).__name__}: {exc})") from None
    if device.type != "cpu":
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, device)
    return Cropper(ExportedBackend(program.module(), path), int(meta["short_side"]), device,
                   description=f"exported ({who}, align {meta.get('align_op')})")


def cache_dir() -> Path:
    """Where compiled models are kept: $FEDPIC_CACHE, else ~/.cache/fedpic."""
    return Path(os.environ.get("FEDPIC_CACHE") or Path.home() / ".cache" / "fedpic") / "compiled"


def compiled_cropper(model: CropScorer, personal: bool, profile: Profile) -> Cropper:
    """A Cropper running `model` compiled by AOTInductor, compiled once and cached by content
    (weights, d_u, torch and fedpic versions)."""
    digest = hashlib.sha256()
    digest.update(f"{__version__} {torch.__version__} {personal}".encode())
    digest.update(state_fingerprint(model.state_dict()).encode())
    path = cache_dir() / f"{digest.hexdigest()[:20]}.pt2"
    if not path.is_file():
        log.info("profile %s: compiling the model for this CPU (about a minute, once; cached in %s)",
                 profile.name, path.parent)
        export_model(model, path, personal, compile=True)
    return load_exported(path, "cpu")


def run_export_command(args: argparse.Namespace) -> int:
    from .cli import config_from_args
    from .train import configure_runtime

    config = config_from_args(args)
    configure_runtime(config)
    model, _ = load_model(args.model, "cpu")
    user_id = None
    if args.user_state:
        user_id = load_user_state(args.user_state, model).get("user_id")
    meta = export_model(model, args.out, personal=args.user_state is not None, user_id=user_id,
                        check=not args.no_check, compile=args.compile)
    check = meta.get("check_max_abs_diff")
    log.info("exported %s%s to %s in %.1fs (align op: %s%s%s)", args.model,
             f" + user {user_id}" if user_id else "", args.out, meta["seconds"], meta["align_op"],
             ", compiled for this CPU" if args.compile else "",
             f", max |exported - eager| = {check:.2e}" if check is not None else "")
    return 0
