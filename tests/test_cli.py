"""End to end through the `fedpic` command: pretrain -> prior -> personalize -> evaluate."""
import json

import pytest
import torch

from fedpic.cli import main
from pic_core.checkpoint import load_model

TINY = ["--config", "tiny"]


@pytest.fixture(scope="module")
def trained(toy_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    assert main(["pretrain", "--data", str(toy_dataset), "--out", str(out / "pre.pt"), *TINY,
                 "--set", "pre.epochs=3"]) == 0
    assert main(["prior", "--data", str(toy_dataset), "--init", str(out / "pre.pt"), "--out", str(out / "prior.pt"),
                 *TINY, "--set", "prior.epochs=25", "--set", "prior.lr=3e-3",
                 "--user-states", str(out / "users")]) == 0
    return out


def test_training_loss_falls_and_the_model_learns_its_training_set(trained, toy_dataset, capsys):
    _, meta = load_model(trained / "prior.pt")
    losses = meta["extra"]["train"]["epoch_losses"]
    assert len(losses) == 25 and losses[-1] < 0.7 * losses[0]
    capsys.readouterr()
    accuracies = []
    for user in ("user0", "user1", "user2"):
        assert main(["evaluate", "--model", str(trained / "prior.pt"), "--user-state",
                     str(trained / "users" / f"{user}.pt"), "--data", str(toy_dataset), "--user", user,
                     "--split", "prior", "--json", str(trained / f"{user}.json"), *TINY]) == 0
        metrics = json.loads((trained / f"{user}.json").read_text())
        assert metrics["user"] == user and metrics["images"] == 6 and metrics["personalized"] is True
        accuracies.append(metrics["acc1_5"])
    # chance is about 5/90; a model that learned its training images is far above it
    assert sum(accuracies) / len(accuracies) >= 0.6


def test_personalize_then_evaluate_writes_a_user_state(trained, toy_dataset, capsys):
    state = trained / "user1_state.pt"
    assert main(["personalize", "--model", str(trained / "prior.pt"), "--data", str(toy_dataset), "--user", "user1",
                 "--shots", "2", "--out", str(state), *TINY]) == 0
    payload = torch.load(state, weights_only=True)
    assert payload["user_id"] == "user1" and payload["extra"]["shots"] == 2
    offsets = [k for k in payload["personal"] if k.startswith("personal.offsets.")]
    assert set(payload["personal"]) == {"personal.delta", *offsets} and offsets
    assert torch.count_nonzero(payload["personal"]["personal.delta"]) > 0
    assert any(torch.count_nonzero(payload["personal"][k]) > 0 for k in offsets)  # the fast path fits them too
    capsys.readouterr()
    assert main(["evaluate", "--model", str(trained / "prior.pt"), "--user-state", str(state), "--data",
                 str(toy_dataset), "--user", "user1", *TINY]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["split"] == "test" and 0.0 <= printed["acc1_5"] <= 1.0 and "wacc_10" in printed
    assert main(["evaluate", "--model", str(trained / "prior.pt"), "--data", str(toy_dataset), "--user", "user1",
                 "--gaic-table", *TINY]) == 0
    head, row = capsys.readouterr().out.strip().splitlines()[-2:]
    assert head.split()[0] == "Acc1/5" and head.split()[-1] == "PCC" and len(row.split()) == 12


def test_population_evaluation_reports_means_with_intervals(trained, toy_dataset, tmp_path):
    out = tmp_path / "pop.json"
    assert main(["evaluate", "--all-users", "--model", str(trained / "prior.pt"), "--data", str(toy_dataset),
                 "--shots", "2", "--json", str(out), *TINY]) == 0
    report = json.loads(out.read_text())
    assert report["users"] == 3 and report["shots"] == 2
    for method in ("generic", "personalized"):
        summary = report[method]["summary"]["acc1_5"]
        assert summary["users"] == 3 and summary["ci95"] >= 0
        assert set(report[method]["per_user"]) == {"user0", "user1", "user2"}


def test_errors_are_one_line_and_name_the_problem(toy_dataset, tmp_path, capsys):
    assert main(["prior", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.pt"), *TINY]) == 2
    assert "nowhere" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("prior:\n  epochz: 3\n")
    assert main(["prior", "--data", str(toy_dataset), "--out", str(tmp_path / "m.pt"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "prior.epochz" in err and "epochs" in err
    assert main(["evaluate", "--model", str(tmp_path / "missing.pt"), "--data", str(toy_dataset),
                 "--user", "user0", *TINY]) == 2
    assert "missing.pt" in capsys.readouterr().err
