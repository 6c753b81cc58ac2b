"""The whole story on the embedded synthetic default, in minutes on a laptop CPU (`fedpic demo`).

    fedpic demo --out runs/demo          # --config demo is the default

1. population: `fedpic synth` (40 users x 32 images by default) into OUT/population;
2. federation: `fedpic simulate` into OUT/federated (pre stage, Flower rounds, evaluation);
3. report: `fedpic report OUT` -> OUT/report.md and OUT/figures/.

Running it again loses nothing: a finished population or federation is reused, a federation
that stopped part way resumes from its last checkpoint, and only the report is rewritten.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from pic_core.config import Config
from pic_core.data.synthetic import PopulationSpec, generate
from server.checkpoint import CHECKPOINT_FILE

from .federated import RESULTS_FILE
from .report import build_report
from .simulate import run_simulation

log = logging.getLogger("fedpic.demo")

POPULATION_DIR = "population"
FEDERATED_DIR = "federated"


def ensure_population(spec: PopulationSpec, folder: Path, progress: bool) -> Path:
    """Generate the population unless `folder` already holds this very spec's output."""
    marker = folder / "population.json"
    if marker.is_file():
        written = json.loads(marker.read_text())
        same = (written.get("seed") == spec.seed and written.get("users") == spec.users
                and written.get("counts") == {"prior": spec.prior, "train": spec.train, "test": spec.test}
                and written.get("candidates", "grid") == spec.candidates)
        if not same:
            raise FileExistsError(f"{folder} holds another population ({marker}); use a new --out")
        log.info("population: reusing %s", folder)
        return folder
    log.info("population: %d users x %d images -> %s", spec.users, spec.per_user, folder)
    generate(spec, folder, progress=progress, force=folder.exists())
    return folder


def federation_state(folder: Path) -> str:
    """'done' (results.json written), 'stopped' (a checkpoint without results) or 'new'."""
    if (folder / RESULTS_FILE).is_file():
        return "done"
    return "stopped" if (folder / CHECKPOINT_FILE).is_file() else "new"


def run_demo(config: Config, out: Path, spec: Optional[PopulationSpec] = None) -> Path:
    """Population -> federated simulation -> report; returns the report's path."""
    out = Path(out)
    spec = spec or PopulationSpec(seed=config.seed)
    timing: dict[str, float] = {}
    start = time.perf_counter()
    data = ensure_population(spec, out / POPULATION_DIR, config.progress)
    timing["population_seconds"] = time.perf_counter() - start

    federated = out / FEDERATED_DIR
    state = federation_state(federated)
    start = time.perf_counter()
    if state == "done":
        log.info("federation: %s already finished; delete it to train again", federated)
    else:
        run_simulation(config, data, federated, resume=state == "stopped")
    timing["federation_seconds"] = time.perf_counter() - start

    start = time.perf_counter()
    report = build_report(out)
    timing["report_seconds"] = time.perf_counter() - start
    (out / "demo.json").write_text(json.dumps({"population": asdict(spec), "federation": state,
                                               "timing": timing}, indent=1) + "\n")
    log.info("demo: %s", ", ".join(f"{k} {v:.0f}" for k, v in timing.items()))
    return report
