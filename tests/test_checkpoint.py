import pytest
import torch

from pic_core.checkpoint import (CheckpointError, load_model, load_user_state, save_model, save_user_state,
                                 state_fingerprint)
from pic_core.config import ModelConfig
from pic_core.model import CropScorer
from pic_core.params import load_shared, shared_state

TINY = ModelConfig(backbone="mobilenet_v2", width=0.35, channels=4, align_size=5, short_side=64, hidden=16, feature_dim=8, embed_dim=4,
                   context_dim=8, dropout=0.0)


def test_model_file_round_trip_keeps_shared_weights_only(tmp_path):
    torch.manual_seed(0)
    model = CropScorer(TINY)
    with torch.no_grad():
        model.personal.delta.fill_(3.0)
    path = save_model(tmp_path / "m.pt", model, {"seed": 0}, "prior", {"note": 1})
    raw = torch.load(path, weights_only=True)
    assert not any(k.startswith("personal.") for k in raw["state_dict"])
    loaded, meta = load_model(path)
    assert meta["stage"] == "prior" and meta["model_config"]["embed_dim"] == 4 and meta["extra"] == {"note": 1}
    assert meta["fingerprint"] == state_fingerprint(shared_state(model))
    for key, value in shared_state(model).items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    assert torch.count_nonzero(loaded.personal.delta) == 0  # a model file is the generic model


def test_user_state_round_trip_and_model_mismatch_warning(tmp_path):
    torch.manual_seed(0)
    model = CropScorer(TINY)
    with torch.no_grad():
        model.personal.delta.copy_(torch.arange(4.0))
    save_user_state(tmp_path / "u.pt", model, "alice")
    other = CropScorer(TINY)
    with pytest.raises(CheckpointError, match="different shared model"):
        load_user_state(tmp_path / "u.pt", other)
    with pytest.warns(UserWarning, match="different shared model"):
        meta = load_user_state(tmp_path / "u.pt", other, strict=False)
    assert meta["user_id"] == "alice"
    torch.testing.assert_close(other.personal.delta.detach(), torch.arange(4.0))


def test_user_state_carries_head_offsets_and_older_states_load_as_zero(tmp_path):
    torch.manual_seed(0)
    model = CropScorer(TINY)
    with torch.no_grad():
        for p in model.personal.offset_parameters():
            p.normal_()
    save_user_state(tmp_path / "u.pt", model, "alice")
    raw = torch.load(tmp_path / "u.pt", weights_only=True)
    assert any(k.startswith("personal.offsets.") for k in raw["personal"])
    other = CropScorer(TINY)
    load_shared(other, shared_state(model))
    load_user_state(tmp_path / "u.pt", other)
    for mine, theirs in zip(model.personal.offset_parameters(), other.personal.offset_parameters()):
        torch.testing.assert_close(theirs.detach(), mine.detach())
    raw["personal"] = {k: v for k, v in raw["personal"].items() if not k.startswith("personal.offsets.")}
    torch.save(raw, tmp_path / "old.pt")  # a state written before the offsets existed
    load_user_state(tmp_path / "old.pt", other)
    assert all(torch.count_nonzero(p) == 0 for p in other.personal.offset_parameters())
    plain = CropScorer(ModelConfig(**{**TINY.__dict__, "personal_offsets": False}))
    load_shared(plain, shared_state(model))
    with pytest.raises(CheckpointError, match="personal_offsets: false"):
        load_user_state(tmp_path / "u.pt", plain)


def test_wrong_files_give_clear_errors(tmp_path):
    model = CropScorer(TINY)
    save_user_state(tmp_path / "u.pt", model, "alice")
    with pytest.raises(CheckpointError, match="expected a fedpic-model file"):
        load_model(tmp_path / "u.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable"):
        load_model(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "missing.pt")
    path = save_model(tmp_path / "m.pt", model)
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format version 99"):
        load_model(tmp_path / "future.pt")
    bigger = CropScorer(ModelConfig(**{**TINY.__dict__, "embed_dim": 5}))
    with pytest.raises(CheckpointError, match="embed_dim"):
        load_user_state(tmp_path / "u.pt", bigger)


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    model = CropScorer(TINY)
    path = save_model(tmp_path / "m.pt", model)
    before = path.read_bytes()

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", explode)
    with pytest.raises(RuntimeError):
        save_model(path, model)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
