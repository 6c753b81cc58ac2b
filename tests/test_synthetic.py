"""The synthetic population: file formats, determinism, oracle scores and taste divergence."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pic_core.data.scenes import Scene, make_scene, render_scene
from fedpic.cli import build_parser
from fedpic.cli import main as fedpic_main
from fedpic.commands import data as data_commands
from pic_core.data.synthetic import (DEFAULT_IMAGES, DEFAULT_USERS, PopulationSpec, candidate_boxes, generate,
                                     make_users, plan_images, population_stats, probe_scenes, probe_stats,
                                     split_counts)
from pic_core.data.tastes import FAMILIES, Taste, crop_facts, draw_taste
from pic_core.geometry import grid_anchors, resized_size, to_original

TINY = PopulationSpec(users=6, prior=2, train=1, test=1, seed=3, probe=8)


def read_rows(path: Path) -> list[dict]:
    """Parse one of the CSVs with nothing but the csv and json modules."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        header = reader.fieldnames
    for row in rows:
        row["bbox"] = json.loads(row["bbox"])
        row["score"] = float(row["score"])
    return header, rows


def by_image(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["name"], []).append(row)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    generate(TINY, out, workers=1, progress=False)
    return out


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files(tiny, tmp_path):
    generate(TINY, tmp_path, workers=2, progress=False)  # parallel rendering must not change a byte
    assert all_files(tmp_path) == all_files(tiny)


def test_different_seed_gives_different_data(tiny, tmp_path):
    spec = PopulationSpec(users=6, prior=2, train=1, test=1, seed=4, probe=8)
    generate(spec, tmp_path, workers=1, progress=False)
    for name in ("users/u000.csv", "generic.csv", "scenes.json", "users.json"):
        assert (tmp_path / name).read_bytes() != (tiny / name).read_bytes(), name


def test_refuses_to_overwrite_without_force(tiny, tmp_path):
    (tmp_path / "something").write_text("x")
    with pytest.raises(FileExistsError):
        generate(TINY, tmp_path, workers=1, progress=False)


def test_csv_round_trip_and_every_candidate_scored(tiny):
    scenes = json.loads((tiny / "scenes.json").read_text())
    users = json.loads((tiny / "users.json").read_text())
    assert sorted(users) == [f"u{i:03d}" for i in range(6)]
    header, generic = read_rows(tiny / "generic.csv")
    assert header == ["name", "bbox", "score"]
    generic = by_image(generic)
    assert sorted(generic) == sorted(scenes)
    for uid, data in users.items():
        header, rows = read_rows(tiny / "users" / f"{uid}.csv")
        assert header == ["name", "bbox", "score", "split"]
        images = by_image(rows)
        assert {s: len(v) for s, v in data["images"].items()} == {"prior": 2, "train": 1, "test": 1}
        assert sorted(images) == sorted(n for v in data["images"].values() for n in v)
        for name, crops in images.items():
            scene = scenes[name]
            h, w = scene["height"], scene["width"]
            image = cv2.imread(str(tiny / "images" / name))
            assert image.shape[:2] == (h, w)
            size = resized_size(h, w)
            expected = to_original(grid_anchors(*size), size, (h, w))
            boxes = np.array([r["bbox"] for r in crops])
            assert boxes.shape == expected.shape
            np.testing.assert_allclose(boxes, expected, atol=0.006)
            assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
            assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
            assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
            assert {r["split"] for r in crops} == {next(s for s, v in data["images"].items() if name in v)}
            assert all(np.isfinite(r["score"]) for r in crops)
            assert [r["bbox"] for r in generic[name]] == [r["bbox"] for r in crops]


def test_oracle_reproduces_csv_scores(tiny):
    scenes = json.loads((tiny / "scenes.json").read_text())
    users = json.loads((tiny / "users.json").read_text())
    tastes = {uid: Taste.from_json(uid, data) for uid, data in users.items()}
    generic = by_image(read_rows(tiny / "generic.csv")[1])
    for uid, taste in tastes.items():
        for name, crops in by_image(read_rows(tiny / "users" / f"{uid}.csv")[1]).items():
            scene = Scene.from_json(scenes[name])
            boxes = np.array([r["bbox"] for r in crops])  # boxes as read back from the file
            assert [f"{s:.4f}" for s in taste.score(scene, name, boxes)] == [f"{r['score']:.4f}" for r in crops]
    # generic = the mean over every user's scoring function, not only the owner's
    name = next(iter(generic))
    scene = Scene.from_json(scenes[name])
    boxes = np.array([r["bbox"] for r in generic[name]])
    mean = np.mean([t.score(scene, name, boxes) for t in tastes.values()], axis=0)
    owner = tastes[name.split("_")[0]].score(scene, name, boxes)
    assert [f"{s:.4f}" for s in mean] == [f"{r['score']:.4f}" for r in generic[name]]
    assert not np.allclose(mean, owner, atol=1e-3)


def test_population_json_has_families_and_stats(tiny):
    population = json.loads((tiny / "population.json").read_text())
    assert population["seed"] == 3 and population["users"] == 6
    assert population["counts"] == {"prior": 2, "train": 1, "test": 1}
    assert set(population["families"]) == set(FAMILIES) and sum(population["families"].values()) == 6
    assert population["stats"] == population_stats(tiny)
    assert population["stats"]["test_pairs"] == 6


def test_shared_images_same_photos_different_tastes(tmp_path):
    spec = PopulationSpec(users=3, prior=1, train=0, test=1, seed=1, shared=True, probe=0)
    generate(spec, tmp_path, workers=1, progress=False)
    rows = [by_image(read_rows(tmp_path / "users" / f"u00{i}.csv")[1]) for i in range(3)]
    assert sorted(rows[0]) == sorted(rows[1]) == sorted(rows[2]) == ["shared_000.jpg", "shared_001.jpg"]
    assert len(list((tmp_path / "images").iterdir())) == 2
    first = [[r["score"] for r in user["shared_000.jpg"]] for user in rows]
    assert np.argmax(first[0]) != np.argmax(first[1]) or np.argmax(first[1]) != np.argmax(first[2])
    assert not np.allclose(first[0], first[1])


def test_users_own_different_photos():
    plans = plan_images(PopulationSpec(users=3, prior=1, train=1, test=1, seed=0))
    assert [p.owners for p in plans] == [[0]] * 3 + [[1]] * 3 + [[2]] * 3
    assert len({json.dumps(p.scene.to_json()) for p in plans}) == 9
    # a user's photos do not depend on how many other users there are
    more = plan_images(PopulationSpec(users=5, prior=1, train=1, test=1, seed=0))
    assert [p.scene.to_json() for p in more[:3]] == [p.scene.to_json() for p in plans[:3]]


def test_split_counts():
    assert split_counts(32) == (12, 10, 10)
    assert sum(split_counts(7)) == 7 and min(split_counts(7)) >= 2
    assert split_counts(20, test=5) == (8, 7, 5)
    assert split_counts(4, prior=1, train=1, test=2) == (1, 1, 2)
    with pytest.raises(ValueError):
        split_counts(3, prior=4)
    with pytest.raises(ValueError):
        PopulationSpec(users=0)


def main(argv):
    return fedpic_main(["synth", *argv])


def test_cli_writes_dataset(tmp_path, capsys):
    out = tmp_path / "pop"
    assert main(["--out", str(out), "--users", "2", "--images-per-user", "3", "--probe-images", "2",
                 "--workers", "1", "--no-progress"]) == 0
    population = json.loads((out / "population.json").read_text())
    assert population["counts"] == {"prior": 1, "train": 1, "test": 1}
    assert "generic_top1_is_user_top1" in capsys.readouterr().out
    assert main(["--out", str(out), "--users", "2", "--no-progress"]) == 2  # exists, no --force
    assert main(["--out", str(out), "--users", "2", "--images-per-user", "3", "--test-images", "5",
                 "--no-progress", "--force"]) == 2


def test_synth_subcommand_parses_and_its_defaults_match_the_generator(tmp_path):
    args = build_parser().parse_args(["synth", "--users", "2", "--images-per-user", "2", "--out",
                                      str(tmp_path / "d"), "--shared-images", "--seed", "7"])
    assert args.func is data_commands.run and args.shared_images and args.seed == 7 and args.users == 2
    defaults = build_parser().parse_args(["synth", "--out", str(tmp_path / "d")])
    assert defaults.users == DEFAULT_USERS == data_commands.USERS and data_commands.IMAGES == DEFAULT_IMAGES
    assert data_commands.spec_from_args(defaults) == PopulationSpec(users=DEFAULT_USERS, prior=12, train=10, test=10)


def test_scene_facts_inside_image_and_rendered_visibly():
    for seed in range(20):
        scene = make_scene(np.random.default_rng(seed))
        assert 384 <= max(scene.width, scene.height) <= 512
        assert 1 <= len(scene.subjects) <= 3 and scene.main == 0
        main_area = np.prod(np.diff(np.reshape(scene.subjects[0].box, (2, 2)), axis=0))
        for s in scene.subjects:
            x1, y1, x2, y2 = s.box
            assert 0 <= x1 < x2 <= scene.width and 0 <= y1 < y2 <= scene.height
            assert (s.head is not None) == (s.kind == "person")
            assert np.prod(np.diff(np.reshape(s.box, (2, 2)), axis=0)) <= main_area
        assert 0 < min(scene.horizon) and max(scene.horizon) < scene.height
        image = render_scene(scene)
        assert image.shape == (scene.height, scene.width, 3)
        assert np.array_equal(image, render_scene(Scene.from_json(json.loads(json.dumps(scene.to_json())))))
        # the horizon is visible: mean colour just above and just below it differ clearly
        x = np.arange(scene.width)
        y = np.round(scene.horizon_at(x)).astype(int)
        above = image[np.clip(y - 6, 0, scene.height - 1), x].astype(float)
        below = image[np.clip(y + 6, 0, scene.height - 1), x].astype(float)
        assert np.abs(above.mean(0) - below.mean(0)).sum() > 60
        # the main subject stands out from the picture around it
        x1, y1, x2, y2 = (int(v) for v in scene.subjects[0].box)
        inside = image[y1:y2, x1:x2].reshape(-1, 3).astype(float)
        assert np.abs(inside - image.reshape(-1, 3).mean(0)).sum(1).mean() > 40


def test_taste_facts_follow_the_crop():
    scene = make_scene(np.random.default_rng(11))
    boxes = candidate_boxes(scene.height, scene.width)
    facts = crop_facts(scene, boxes)
    assert facts.place_x.shape == (len(boxes),)
    whole = np.array([[0, 0, scene.width, scene.height]], dtype=float)
    assert crop_facts(scene, whole).objective[0] < facts.objective.max()
    # a family's prototype prefers its own target: centred users put the subject nearer the middle
    rng = np.random.default_rng(0)
    centred, thirds = draw_taste("a", "centred", rng), draw_taste("b", "thirds", rng)
    xs = {"centred": [], "thirds": []}
    for seed in range(40):
        scene = make_scene(np.random.default_rng([9, seed]))
        boxes = candidate_boxes(scene.height, scene.width)
        facts = crop_facts(scene, boxes)
        for taste in (centred, thirds):
            xs[taste.family].append(facts.place_x[taste.score(scene, "x", boxes).argmax()])
    assert np.mean(xs["centred"]) + 0.04 < np.mean(xs["thirds"])


def test_divergence_between_families():
    """Moderate population: families disagree much more than members of one family, and the
    population-average best crop is a given user's best crop on well under 60% of images."""
    tastes = make_users(24, seed=0)
    stats = probe_stats(tastes, probe_scenes(0, 40))
    assert stats["different_family_1_minus_srcc"] > 2 * stats["same_family_1_minus_srcc"]
    assert stats["different_family_top1_disagreement"] > stats["same_family_top1_disagreement"] + 0.2
    assert stats["noise_keeps_top1"] > 0.7


def test_generic_best_crop_rarely_the_users_best(tmp_path):
    spec = PopulationSpec(users=12, prior=0, train=0, test=3, seed=2, probe=0)
    generate(spec, tmp_path, workers=2, progress=False)
    stats = population_stats(tmp_path)
    assert stats["test_pairs"] == 36
    assert stats["generic_top1_is_user_top1"] <= 0.6
    assert stats["generic_top1_in_user_top5"] >= stats["generic_top1_is_user_top1"]
