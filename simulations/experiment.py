"""The centralized experiment: every baseline on one dataset, written into a run folder.

    RUN_DIR/pre.pt            the pre-stage model (methods `generic`, `pre-finetune`, `pre-finetune-du`)
    RUN_DIR/prior.pt          the prior-stage model (methods `prior`, `centralized`, `centralized-du`)
    RUN_DIR/user_states/n<N>/<user>.pt   each user's fitted d_u for N shots (finetune mode fast)
    RUN_DIR/results.json      format "fedpic-results" (docs/formats.md): every method x shots, with
                              main_shots, evaluated (the users of each row) and gains (paired)
    RUN_DIR/gallery.json      crop picks for the report's galleries

`fedpic report RUN_DIR` turns the folder into report.md with plots and galleries.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from pic_core import __version__
from pic_core.checkpoint import save_model, save_user_state
from pic_core.config import Config, to_dict
from pic_core.atomic import atomic_write_text
from pic_core.data.dataset import Dataset
from pic_core.data.records import UserData
from pic_core.model import CropScorer
from pic_core.protocol import PopulationResult, json_safe
from pic_core.samples import SampleCache
from pic_core.runtime import configure_runtime
from pic_core.train import TrainLog

from .baselines import METHODS, LocalOnlySettings, load_users, train_generic, train_local_only, train_prior_model
from .evaluation import (BackboneCaches, check_settings, evaluate_rows, objective_only, oracle_row, per_user_row,
                         pre_rows, row_label, shared_rows)
from .gallery import GALLERY_FILE, GalleryRecorder, plan_gallery, user_families
from .paths import recorded_paths, resolve_recorded

log = logging.getLogger("fedpic.experiment")

RESULTS_FILE = "results.json"
RESULTS_FORMAT = "fedpic-results"
RESULTS_VERSION = 1
PRE_MODEL = "pre.pt"
PRIOR_MODEL = "prior.pt"
USER_STATES = "user_states"


def results_payload(results: Sequence[PopulationResult], *, kind: str, data_dir: Union[str, Path],
                    config: Optional[Config] = None, extra: Optional[dict] = None) -> dict:
    """The results JSON object (format "fedpic-results", docs/formats.md)."""
    payload = {"format": RESULTS_FORMAT, "format_version": RESULTS_VERSION, "fedpic_version": __version__,
               "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "kind": kind, "data": str(data_dir),
               "config": to_dict(config) if config is not None else None,
               "methods": {m: row_label(m) for m in dict.fromkeys(r.method for r in results)},
               "results": [r.as_dict() for r in results]}
    payload.update(extra or {})
    return json_safe(payload)


def write_results(path: Union[str, Path], payload: dict) -> Path:
    """Strict JSON, written atomically; the dataset path is recorded relative to the file's folder."""
    path = Path(path)
    if payload.get("data"):
        payload = {**payload, **recorded_paths("data", payload["data"], path)}
    atomic_write_text(path, json.dumps(payload, indent=1, allow_nan=False) + "\n")
    return path


def read_results(path: Union[str, Path]) -> tuple[dict, list[PopulationResult]]:
    """(payload, results) of a "fedpic-results" file (its "data" resolved from the file's folder);
    ValueError naming the file when it is not one."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != RESULTS_FORMAT:
        raise ValueError(f"{path}: expected format {RESULTS_FORMAT!r}, found "
                         f"{payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r}")
    if payload.get("format_version") != RESULTS_VERSION:
        raise ValueError(f"{path}: format_version {payload.get('format_version')}, this fedpic reads {RESULTS_VERSION}")
    results = [PopulationResult.from_dict(r, f"{path}: results[{i}]") for i, r in enumerate(payload["results"])]
    data = resolve_recorded(payload, "data", path)
    if data is not None:  # back to a path from here (write_results records it again)
        payload["data"] = str(data)
    return payload, results


def population_info(data_dir: Path) -> Optional[dict]:
    """The dataset's population.json (synthetic populations), or None."""
    path = Path(data_dir) / "population.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s); the report will not show population statistics", path, exc)
        return None


def run_centralized(data_dir: Union[str, Path], config: Config, out_dir: Union[str, Path],
                    shots: Sequence[int] = (5, 10), local: Optional[LocalOnlySettings] = None,
                    methods: Sequence[str] = tuple(METHODS), gallery_users: int = 4) -> dict:
    """Train pre and prior once, evaluate every method for every N in `shots` on every user, and
    the other N of evaluation.shots on the curve sample (simulations/evaluation.py); returns the payload.

    `methods` picks a subset of METHODS (local-only is the slowest: one model from scratch per user and N).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    shots = [int(n) for n in shots]
    if not shots or any(n < 1 for n in shots):
        raise ValueError(f"shots must be positive integers, got {shots}")
    check_settings(config)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = configure_runtime(config)
    dataset = Dataset(data_dir)
    users = load_users(dataset)
    cache = SampleCache(config.model.short_side)
    timing: dict[str, float] = {}
    logs: dict[str, dict] = {}

    def stage(name: str, train: Callable[[], tuple[CropScorer, TrainLog]], file: str) -> CropScorer:
        start = time.perf_counter()
        model, train_log = train()
        timing[f"{name}_seconds"] = time.perf_counter() - start
        logs[name] = train_log.as_dict()
        save_model(out_dir / file, model, to_dict(config), name, {"train": logs[name]})
        log.info("%s: loss %s in %.1fs", name, train_log.summary(), timing[f"{name}_seconds"])
        return model

    pre_model = stage("pre", lambda: train_generic(dataset, users, config, cache, device), PRE_MODEL)
    prior_model: Optional[CropScorer] = None
    if {"prior", "centralized", "centralized-du", "centralized-compact"} & set(methods):
        prior_model = stage("prior", lambda: train_prior_model(pre_model, users, config, cache, device), PRIOR_MODEL)

    families = user_families(data_dir)
    recorder = GalleryRecorder(plan_gallery(users, data_dir, gallery_users), data_dir, device)
    recorder.add_generic(objective_only(pre_model))
    caches = BackboneCaches(config, cache, device)
    rows = pre_rows(pre_model, config, caches(pre_model), device, methods=methods)
    if prior_model is not None:
        rows += shared_rows(prior_model, "centralized", config, caches(prior_model), device, methods=methods)
    if "local" in methods:
        settings = local or LocalOnlySettings()
        rows.append(per_user_row("local", lambda u, n: train_local_only(u, n, config, settings, cache, device),
                                 config, cache, device))
    if "oracle" in methods:
        rows.append(oracle_row())
    order = list(METHODS)
    rows.sort(key=lambda r: order.index(r.method))
    gallery_method = "centralized" if "centralized" in methods else "generic"

    def hook_for(method: str, n: int) -> Optional[Callable[[UserData, CropScorer], None]]:
        if method != "centralized" or n not in shots:
            return None
        hooks = [_state_saver(out_dir / USER_STATES / f"n{n}", config)]
        return _chain(hooks + [recorder] if n == shots[0] else hooks)

    evaluation = evaluate_rows(rows, users, config, shots, hook_for=hook_for)
    timing.update(evaluation.timing)
    extra = {"shots": shots, "users": len(users), "population": population_info(data_dir),
             "local_only": vars(local or LocalOnlySettings()), "timing": timing, "train": logs,
             **evaluation.extra(),
             "files": {"pre_model": PRE_MODEL, "prior_model": PRIOR_MODEL if prior_model is not None else None,
                       "user_states": USER_STATES if config.finetune.mode == "fast" else None,
                       "gallery": GALLERY_FILE}}
    payload = results_payload(evaluation.results, kind="centralized", data_dir=data_dir, config=config, extra=extra)
    write_results(out_dir / RESULTS_FILE, payload)
    recorder.write(out_dir / GALLERY_FILE, gallery_method, shots[0], families)
    log.info("wrote %s", out_dir / RESULTS_FILE)
    return payload


def _state_saver(folder: Path, config: Config):
    """An on_user hook writing each user's fitted d_u (fast mode: the model differs only in d_u)."""
    def save(user: UserData, scorer: CropScorer) -> None:
        if config.finetune.mode == "fast":
            save_user_state(folder / f"{user.user_id}.pt", scorer, user.user_id, {"stage": "finetune"})
    return save


def _chain(hooks: Sequence[Callable[[UserData, CropScorer], None]]) -> Callable[[UserData, CropScorer], None]:
    def run(user: UserData, scorer: CropScorer) -> None:
        for hook in hooks:
            hook(user, scorer)
    return run
