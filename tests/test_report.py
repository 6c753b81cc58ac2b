"""`fedpic baselines` + `fedpic report` on a tiny population: files, tables, tolerance."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import pytest

from fedpic.cli import main
from pic_core.protocol import PopulationResult
from simulations.experiment import read_results
from simulations.report import REPORT_FILE, build_report, curve_groups, load_run, paired_gain
from test_baselines import make_population

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("generic", "prior", "local", "centralized", "oracle")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real run folder made through the command line (4 users: 4 taste families)."""
    base = tmp_path_factory.mktemp("report")
    data = make_population(base / "data", users=4)
    out = base / "run"
    code = main(["baselines", "--data", str(data), "--out", str(out), "--shots", "1", "2", "--local-epochs", "1",
                 "--config", str(ROOT / "configs" / "tiny.yaml"), "--set", "pre.epochs=1", "--set", "prior.epochs=1",
                 "--gallery-users", "2"])
    assert code == 0
    return out


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    return target


def _image_ok(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 1000, path
    image = cv2.imread(str(path))
    assert image is not None and image.std() > 1.0, f"{path}: blank image"
    return image.shape[:2]


def test_report_files_and_tables(run_dir, tmp_path):
    run = _copy(run_dir, tmp_path)
    assert main(["report", str(run)]) == 0
    text = (run / REPORT_FILE).read_text()
    for method in METHODS:
        for n in (1, 2):
            assert f"| {method} | {n} |" in text, (method, n)
    assert "### Gain over generic" in text and "| centralized | 1 | generic |" in text
    assert "## Population" in text and "4 users" in text
    assert "## Learning curves" not in text  # no rounds.jsonl in a centralized run
    figures = run / "figures"
    _image_ok(figures / "accuracy_vs_shots.png")
    _image_ok(figures / "gain_histogram.png")
    families = json.loads((run / "gallery.json").read_text())["families"]
    assert len(set(families.values())) == 4
    for family in set(families.values()):
        height, width = _image_ok(figures / f"gallery_{family}.png")
        assert width > height  # generic tile and the family's user(s) side by side
        assert f"figures/gallery_{family}.png" in text
    _image_ok(figures / "gallery_overview.png")
    overview = next(s for s in json.loads((run / "gallery.json").read_text())["sheets"] if s["name"] == "gallery_overview")
    assert [t["label"] for t in overview["tiles"]] == ["generic", "u000", "u001", "u002", "u003"]
    assert all(t["own_best"] is not None for t in overview["tiles"][1:])  # synthetic tastes give every user's own best


def test_report_reads_federated_results_and_rounds(run_dir, tmp_path):
    """A federated run next to the centralized one: its methods join the table, its rounds get curves."""
    run = _copy(run_dir, tmp_path)
    _, results = read_results(run / "results.json")
    centralized = next(r for r in results if r.method == "centralized" and r.shots == 1)
    generic = next(r for r in results if r.method == "generic" and r.shots == 1)
    fed = run / "federated"
    fed.mkdir()
    federated = PopulationResult("federated", 1, centralized.per_user)
    fed_generic = PopulationResult("federated-generic", 1, generic.per_user)
    (fed / "results.json").write_text(json.dumps({
        "format": "fedpic-federated-results", "format_version": 1,
        "evaluation": {"shots": 1, "generic": fed_generic.to_json(), "personalized": federated.to_json()}}))
    rounds = [{"round": r, "evaluate": None if r % 2 else {"acc1_5": 0.1 * r, "srcc": 0.05 * r},
               "train": {"loss-shared": 1.0 / (r + 1)}, "aggregated": True} for r in range(5)]
    (fed / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    text = build_report(run).read_text()
    assert "| federated | 1 |" in text and "| federated-generic | 1 |" in text
    assert "| federated | 1 | generic |" in text  # gains against the centralized generic baseline
    assert "## Learning curves (`federated/rounds.jsonl`, 5 rounds)" in text
    _image_ok(run / "figures" / "learning_curves_federated_rounds.png")


def test_repeated_method_is_renamed_not_dropped(run_dir, tmp_path):
    run = _copy(run_dir, tmp_path)
    (run / "again").mkdir()
    shutil.copy(run / "results.json", run / "again" / "results.json")
    contents = load_run(run)
    assert ("centralized [again]", 2) in contents.results and ("centralized", 2) in contents.results
    assert any("repeats method centralized" in note for note in contents.notes)


def test_empty_or_bad_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results.json"):
        build_report(tmp_path)
    (tmp_path / "rounds.jsonl").write_text('{"round": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"rounds.jsonl:2"):
        build_report(tmp_path)
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_paired_gain_counts():
    base = PopulationResult("generic", 5, {u: {"acc1_5": v} for u, v in zip("abcd", (0.0, 0.5, 0.5, 1.0))})
    better = PopulationResult("centralized", 5, {u: {"acc1_5": v} for u, v in zip("abcd", (1.0, 0.5, 1.0, 0.5))})
    stats = paired_gain(better, base)
    assert stats["mean"] == pytest.approx(0.25)
    assert (stats["better"], stats["same"], stats["worse"], stats["users"]) == (2, 1, 1, 4)
    assert stats["ci95"] > 0 and math.isfinite(stats["ci95"])


def test_curve_groups_keep_only_metrics_and_losses():
    records = [{"round": 0, "evaluate": {"acc1_5": 0.2}, "upload_bytes_mean": 10.0},
               {"round": 1, "evaluate": None, "train": {"loss-shared": 0.5, "num-examples": 40}, "aggregated": True}]
    groups = curve_groups(records)
    assert groups == {"evaluation": {"evaluate.acc1_5": [(0, 0.2)]}, "training loss": {"train.loss-shared": [(1, 0.5)]}}
