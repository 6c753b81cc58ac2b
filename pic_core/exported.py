"""Reading a file written by `fedpic export`: its description, its program, a scoring backend.

The format (a PT2 archive with a JSON description inside) is defined here; export.py writes
it. Loading needs no model file: the description carries the short side and who it is for.
"""
from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch
from torch import Tensor

from . import ops  # noqa: F401  registers torch.ops.fedpic.* when the extension is built (programs may call it)
from .inference import MIN_INPUT_SIDE, Backend

log = logging.getLogger("fedpic")

EXPORT_META = "fedpic_export.json"
EXPORT_FORMAT = "fedpic-exported"
EXPORT_VERSION = 1
PROGRAM_SUFFIX = ".pt2"  # the only name a program loads from: never recognised by content
MAX_SIDE = 8192
MAX_BOXES = 16384

PathLike = Union[str, Path]


class ExportError(ValueError):
    """A model that could not be exported, or an exported file that cannot be used."""


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
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith(f"/extra/{EXPORT_META}")), None)
            if name is None:
                raise ExportError(f"{path}: not written by `fedpic export` (no {EXPORT_META} inside)")
            meta = json.loads(archive.read(name))
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        if isinstance(exc, ExportError):
            raise
        raise ExportError(f"{path}: not a readable program archive ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict):
        raise ExportError(f"{path}: {EXPORT_META} is not a JSON object")
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



@dataclass
class LoadedProgram:
    """What a Cropper needs to run an exported file."""

    backend: Backend
    short_side: int
    device: torch.device
    description: str


def load_program(path: PathLike, device: Union[str, torch.device] = "cpu") -> LoadedProgram:
    """An exported file's scoring backend: its compiled model on CPU when it has one, else the
    exported program (the device's fedpic op must be built when the program uses it). Inputs
    stay contiguous NCHW, the layout the program was traced with."""
    path = Path(path)
    if path.suffix.lower() != PROGRAM_SUFFIX:
        raise ExportError(f"{path}: programs load only from a {PROGRAM_SUFFIX} file the user names")
    meta = read_export_meta(path)
    device = torch.device(device)
    who = f"user {meta['user_id']}" if meta.get("personal") else "generic"
    short_side = int(meta["short_side"])
    if device.type == "cpu" and has_compiled_model(path):
        try:
            runner = torch._inductor.aoti_load_package(str(path))
        except Exception as exc:  # compiled elsewhere, or for another torch: the program still works
            log.warning("%s: cannot load the compiled model (%s: %s); running the exported program",
                        path, type(exc).__name__, exc)
        else:
            return LoadedProgram(ExportedBackend(runner, path), short_side, device,
                                 f"compiled ({who}, align {meta.get('align_op')})")
    try:
        program = torch.export.load(path)
    except Exception as exc:  # corrupt archive, unknown op, newer torch format...
        raise ExportError(f"{path}: cannot load the exported program ({type(exc).__name__}: {exc})") from None
    if device.type != "cpu":
        from torch.export.passes import move_to_device_pass  # a torch submodule only this path needs

        program = move_to_device_pass(program, device)
    return LoadedProgram(ExportedBackend(program.module(), path), short_side, device,
                         f"exported ({who}, align {meta.get('align_op')})")
