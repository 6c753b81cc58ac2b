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
from simulations.experiment import read_results, results_payload, write_results
from simulations.report import REPORT_FILE, _data_dir, build_report, curve_groups, load_run, paired_gain
from test_baselines import make_population

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("generic", "pre-finetune", "pre-finetune-du", "prior", "local", "centralized", "centralized-du", "oracle")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real run folder made through the command line (4 users: 4 taste families)."""
    base = tmp_path_factory.mktemp("report")
    data = make_population(base / "data", users=4)
    out = base / "run"
    code = main(["baselines", "--data", str(data), "--out", str(out), "--shots", "1", "2", "--local-epochs", "1",
                 "--config", "tiny", "--set", "pre.epochs=1", "--set", "prior.epochs=1",
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


def test_report_finds_the_moved_dataset_from_any_folder(run_dir, tmp_path, monkeypatch):
    """results.json/gallery.json record the dataset relative to themselves: a run folder moved together
    with its dataset, reported from an unrelated working directory, still finds its photos."""
    moved = tmp_path / "moved"
    shutil.copytree(run_dir.parent / "data", moved / "data")
    run = _copy(run_dir, moved)
    payload = json.loads((run / "results.json").read_text())
    assert payload["data"] == "../data" and Path(payload["data_absolute"]).is_absolute()
    assert json.loads((run / "gallery.json").read_text())["data"] == "../data"
    assert read_results(run / "results.json")[0]["data"] == str(run / "../data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert _data_dir(load_run(Path("../moved/run"))).resolve() == (moved / "data").resolve()  # not the original
    assert main(["report", "../moved/run"]) == 0
    text = (run / REPORT_FILE).read_text()
    assert "## Population" in text and "4 users" in text and "skipped: photo" not in text
    _image_ok(run / "figures" / "gallery_overview.png")


def _fed_rounds(count: int) -> list[dict]:
    """Round records shaped like server/round_log.py writes them (docs/formats.md)."""
    metrics = ("acc1_5", "acc_5", "acc_10", "wacc_5", "srcc")
    return [{"round": r, "strategy": "fedavg", "aggregated": r > 0, "upload_bytes_mean": 1000.0,
             "train": None if r == 0 else {"loss-personal": 1.0 / (r + 1), "loss-shared": 2.0 / (r + 1),
                                           "train-seconds": 3.0, "compiled-op": 1.0},
             "evaluate": None if r % 2 else {f"{v}-{m}": 0.1 * r + 0.01 * i for i, v in
                                             enumerate(("generic", "personalized", "stored")) for m in metrics}}
            for r in range(count)]


def test_report_reads_federated_results_and_rounds(run_dir, tmp_path):
    """`fedpic simulate --out RUN_DIR/federated` next to the centralized run: its population and
    hold-out evaluations join the table, its round log gets one curve panel per metric."""
    run = _copy(run_dir, tmp_path)
    _, results = read_results(run / "results.json")
    centralized = next(r for r in results if r.method == "centralized" and r.shots == 1)
    generic = next(r for r in results if r.method == "generic" and r.shots == 1)
    fed = run / "federated"
    fed.mkdir()

    def evaluation(per_user_p, per_user_g):
        return {"shots": 1, "users": len(per_user_p), "generic": PopulationResult("federated-generic", 1, per_user_g).to_json(),
                "personalized": PopulationResult("federated", 1, per_user_p).to_json()}
    holdout = {"u9": centralized.per_user["u000"]}
    (fed / "results.json").write_text(json.dumps({
        "format": "fedpic-federated-results", "format_version": 1, "rounds_completed": 5,
        "evaluation": evaluation(centralized.per_user, generic.per_user),
        "holdout_evaluation": evaluation(holdout, holdout)}))
    (fed / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _fed_rounds(5)))
    text = build_report(run).read_text()
    assert "| federated | 1 |" in text and "| federated-generic | 1 |" in text
    assert "| federated [holdout_evaluation] | 1 |" in text  # hold-out users: shown apart, not merged
    assert "| federated | 1 | generic |" in text  # gains against the centralized generic baseline
    assert "## Learning curves (`federated/rounds.jsonl`, 5 rounds)" in text
    _image_ok(run / "figures" / "learning_curves_federated_rounds.png")
    groups = curve_groups(_fed_rounds(5))
    assert list(groups) == ["training loss", "acc1_5", "srcc", "acc_5"]  # wacc_5, acc_10: past max_panels
    assert set(groups["acc1_5"]) == {f"evaluate.{v}-acc1_5" for v in ("generic", "personalized", "stored")}
    assert groups["acc1_5"]["evaluate.personalized-acc1_5"] == [(0, 0.01), (2, pytest.approx(0.21)),
                                                                (4, pytest.approx(0.41))]


def test_report_of_a_federated_run_alone(run_dir, tmp_path):
    """A federated run folder in the fedpic-results format, without any centralized baseline:
    gains are measured against federated-generic; no gallery, no population file needed."""
    _, results = read_results(run_dir / "results.json")
    pick = {r.method: r for r in results if r.shots == 2}
    run = tmp_path / "fedrun"
    run.mkdir()
    payload = results_payload([PopulationResult("federated-generic", 2, pick["generic"].per_user),
                               PopulationResult("federated", 2, pick["centralized"].per_user)],
                              kind="federated", data_dir=tmp_path / "gone")
    write_results(run / "results.json", payload)
    (run / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _fed_rounds(3)))
    assert main(["report", str(run)]) == 0
    text = (run / REPORT_FILE).read_text()
    assert "| federated | 2 | federated-generic |" in text
    assert "`federated` federated PIC" in text
    assert "## Learning curves (`rounds.jsonl`, 3 rounds)" in text and "## Crop galleries" not in text
    _image_ok(run / "figures" / "learning_curves_rounds.png")
    _image_ok(run / "figures" / "accuracy_vs_shots.png")


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
    records = [{"round": 0, "evaluate": {"acc1_5": 0.2, "images": 10}, "upload_bytes_mean": 10.0},
               {"round": 1, "evaluate": None, "train": {"loss-shared": 0.5, "num-examples": 40}, "aggregated": True}]
    groups = curve_groups(records)
    assert groups == {"training loss": {"train.loss-shared": [(1, 0.5)]}, "acc1_5": {"evaluate.acc1_5": [(0, 0.2)]}}
    assert curve_groups([{"round": 0, "upload_bytes_mean": 1.0}]) == {}
