from pathlib import Path

import pytest

from pic_core.config import (SHIPPED_DIR, Config, ConfigError, load_config, parse_overrides, resolve_config,
                             shipped_configs)

CONFIGS = SHIPPED_DIR


@pytest.mark.parametrize("name", ["demo", "fast", "paper", "quality", "tiny"])
def test_shipped_configs_load_by_name_and_path(name):
    assert name in shipped_configs()
    assert load_config(name) == load_config(CONFIGS / f"{name}.yaml") == load_config(f"{name}.yaml")
    assert isinstance(load_config(name), Config)


def test_config_resolution_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config("tiny") == CONFIGS / "tiny.yaml"
    assert resolve_config("configs/tiny.yaml") == CONFIGS / "tiny.yaml"  # the layout before package data
    (tmp_path / "tiny.yaml").write_text("seed: 5\n")  # a file here wins over the shipped name
    assert resolve_config("tiny.yaml") == Path("tiny.yaml") and load_config("tiny.yaml").seed == 5
    assert load_config("tiny").seed == 0  # a bare name with no such file here: the shipped config
    with pytest.raises(ConfigError, match="nosuch.*not the name of a shipped config.*tiny"):
        load_config("nosuch")
    with pytest.raises(ConfigError, match="elsewhere/demo.yaml: no such config file"):
        load_config("elsewhere/demo.yaml")


def test_parse_overrides_types_values():
    assert parse_overrides(["prior.epochs=3", "device=cpu", "prior.lr=0.001", "progress=false"]) == {
        "prior.epochs": 3, "device": "cpu", "prior.lr": 0.001, "progress": False}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["prior.epochs"])


def test_paper_config_carries_reference_settings():
    config = load_config(CONFIGS / "paper.yaml")
    assert (config.model.width, config.model.channels, config.model.align_size, config.model.short_side) == (
        1.0, 8, 9, 256)
    assert (config.pre.lr, config.prior.lr, config.prior.epochs, config.prior.rank_weight) == (1e-4, 1e-3, 20, 0.8)
    assert (config.finetune.shots, config.finetune.epochs, config.finetune.smooth_l1_weight) == (5, 10, 0.8)


def test_unknown_key_lists_valid_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  widht: 0.5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and "model.widht" in message and "width" in message and "channels" in message


@pytest.mark.parametrize("text,field", [("model:\n  channels: eight\n", "model.channels"),
                                        ("prior:\n  lr: [1]\n", "prior.lr"),
                                        ("progress: 1\n", "progress"),
                                        ("finetune:\n  mode: slow\n", "finetune.mode"),
                                        ("model: 3\n", "model")])
def test_wrong_types_name_the_field(tmp_path, text, field):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(path)


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  width: 0.5\n  channels: [1, 2\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: line \d+ malformed YAML"):
        load_config(path)


def test_overrides_and_defaults():
    config = load_config(None, overrides={"prior.epochs": 7, "seed": 3})
    assert config.prior.epochs == 7 and config.seed == 3 and config.model.width == 1.0
    assert load_config(None, overrides={"prior.lr": 1}).prior.lr == 1.0  # ints accepted for floats


def test_exponent_without_dot_is_a_number(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("prior:\n  lr: 1e-3\n")
    assert load_config(path).prior.lr == 1e-3
    path.write_text("prior:\n  lr: 1e-3x\n")
    with pytest.raises(ConfigError, match="prior.lr"):
        load_config(path)
