import pytest

from core.config import ConfigError, load_config, parse_config


def test_defaults_validate_and_round_trip(tmp_path):
    from core.config import Config, dump_config

    path = tmp_path / "config.toml"
    path.write_text(dump_config(Config()))
    assert load_config(path) == Config()


def test_unknown_key_is_refused_with_its_name():
    with pytest.raises(ConfigError, match="unknown config key 'train.learning_rate'"):
        parse_config({"train": {"learning_rate": 0.1}})


def test_bad_value_is_refused_with_its_key():
    with pytest.raises(ConfigError, match="'gates.promotion.policy'"):
        parse_config({"gates": {"promotion": {"policy": "sometimes"}}})
    with pytest.raises(ConfigError, match="'train.batch_size'"):
        parse_config({"train": {"batch_size": 0}})


def test_broken_toml_is_one_clear_error(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[train\nepochs = 2")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_workspace_refuses_a_wrong_key_on_open(workspace):
    from core.cli import main

    text = workspace.config_path.read_text()
    workspace.config_path.write_text(text.replace("[train]", "[train]\nepoch = 3", 1))
    assert main(["status", "--workspace", str(workspace.root)]) == 1
