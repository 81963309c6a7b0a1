"""Every CLI failure is one line naming the problem, with a non-zero exit, no traceback and nothing written;
every --json output is strict JSON; reserved names and out-of-range config values are refused."""
import json

import duckdb
import pydantic
import pytest

from core import auth
from core.cli import main
from core.config import Config, ConfigError, parse_config
from tests.conftest import run_cli


def _one_line_error(capsys, code: int, expected: str, exit_code: int = 1) -> str:
    err = capsys.readouterr().err.strip().removeprefix("using the password in EVOLAB_PASSWORD\n")  # announced
    assert code == exit_code and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert expected in err, err
    return err


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


# -- the file system and the database ------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["is_a_file", "under_a_file"])
def test_init_where_no_folder_can_be_made(tmp_path, tiny_csvs, capsys, where):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a folder")
    target = blocker if where == "is_a_file" else blocker / "ws"
    code = main(["init", "--workspace", str(target), "--labeled", str(tiny_csvs["labeled"])])
    _one_line_error(capsys, code, str(blocker))
    assert blocker.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def _broken(workspace, how: str) -> bytes:
    if how == "corrupt":
        workspace.db.write_bytes(b"these bytes are no DuckDB database " * 200)
    else:  # written by a later Evolab
        from core.store import SCHEMA_VERSION

        con = duckdb.connect(str(workspace.db))
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
        con.close()
    return workspace.db.read_bytes()


@pytest.mark.parametrize("how,expected", [("corrupt", "not a valid DuckDB database file"),
                                          ("newer", "is newer than this Evolab")])
def test_a_database_this_evolab_cannot_use_is_one_line_and_left_alone(workspace, how, expected):
    before = _broken(workspace, how)
    for command in (["status", "--json"], ["samples", "list"], ["audit", "list"]):
        result = run_cli(*command, "--workspace", str(workspace.root))
        err = result.stderr.strip()
        assert result.returncode == 1 and len(err.splitlines()) == 1 and expected in err, (command, err)
        assert str(workspace.db) in err and not result.stdout
    assert workspace.db.read_bytes() == before


@pytest.mark.parametrize("option", ["--limit", "--offset"])
def test_negative_limit_or_offset_is_refused(workspace, capsys, option):
    with pytest.raises(SystemExit) as exit_:
        main(["samples", "list", "--workspace", str(workspace.root), option, "-1"])
    _one_line_error(capsys, exit_.value.code, f"argument {option}: must be 0 or more, not -1", exit_code=2)


def test_an_unexpected_error_is_still_one_line(workspace, monkeypatch, capsys):
    """The last resort: its type and message on one line; the traceback only when asked for."""
    monkeypatch.delenv("EVOLAB_DEBUG", raising=False)
    monkeypatch.setattr("core.cli.status_dict", lambda ws: 1 / 0)
    code = main(["status", "--workspace", str(workspace.root)])
    _one_line_error(capsys, code, "ZeroDivisionError: division by zero (EVOLAB_DEBUG=1 shows the traceback)")
    monkeypatch.setenv("EVOLAB_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["status", "--workspace", str(workspace.root)])


# -- strict JSON ---------------------------------------------------------------------------------------------
def test_every_json_output_is_strict(baseline_ws, capsys):
    root = str(baseline_ws.root)
    for command in (["status"], ["gates"], ["scaffolds"], ["diagnose", "--run"], ["samples", "list"], ["drift"]):
        assert main([*command, "--workspace", root, "--json"]) == 0, command
        _strict(capsys.readouterr().out)
    assert main(["status", "--workspace", root, "--json"]) == 0
    baseline = _strict(capsys.readouterr().out)["cycles"][0]
    assert baseline["kind"] == "baseline" and baseline["parent"] is None  # was NaN


# -- names and config values ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["auto", "engine", "auto-approve", "Engine", "daemon", "first-user"])
def test_reserved_names_cannot_be_users(workspace, tmp_path, capsys, name):
    (tmp_path / "pw").write_text("long-enough-pw")
    code = main(["users", "add", name, "--role", "approver", "--workspace", str(workspace.root),
                 "--password-file", str(tmp_path / "pw")])
    _one_line_error(capsys, code, "is reserved")
    assert workspace.store.users().empty


BAD_VALUES = [
    ({"gates": {"min_gain": -0.01}}, "'gates.min_gain'"),
    ({"gates": {"promotion": {"auto_min_gain": -0.5}}}, "'gates.promotion.auto_min_gain'"),
    ({"drift": {"max_kl": float("inf")}}, "'drift.max_kl': Input should be a finite number"),
    ({"data": {"seed": -1}}, "'data.seed'"),
    ({"curate": {"difficulty_mix": [0.5, 0.5, 0.0]}}, "'curate.difficulty_mix'"),
    ({"curate": {"difficulty_mix": [1.0, -0.1, 0.1, 0.0]}}, "'curate.difficulty_mix.1'"),
    ({"curate": {"difficulty_mix": [0, 0, 0, 0]}}, "at least one of the four weights"),
    ({"curate": {"min_chars": 50, "max_chars": 10}}, "min_chars 50 is above max_chars 10"),
    ({"model": {"lora_layer_ids": [-1]}}, "'model.lora_layer_ids.0'"),
]


@pytest.mark.parametrize("raw,expected", BAD_VALUES, ids=[e for _, e in BAD_VALUES])
def test_out_of_range_config_values_are_refused(raw, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_config(raw)


def test_every_number_in_the_config_has_a_range():
    def unbounded(model, prefix=""):
        for name, field in model.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, pydantic.BaseModel):
                yield from unbounded(field.annotation, f"{prefix}{name}.")
            elif field.annotation in (int, float) and not field.metadata:
                yield prefix + name

    assert list(unbounded(Config)) == []


def test_config_set_refuses_a_negative_margin_and_layers_the_model_lacks(workspace, monkeypatch, capsys):
    auth.add_user(workspace.store, "alice", "approver", "alice-secret")
    monkeypatch.setenv("EVOLAB_PASSWORD", "alice-secret")
    root, before = str(workspace.root), workspace.config_path.read_text()
    for key, value, expected in [("gates.min_gain", "-0.05", "'gates.min_gain'"),
                                 ("model.lora_layer_ids", "[4, 6, 9]",
                                  "model.lora_layer_ids [6, 9] do not exist in base model"),
                                 ("curate.difficulty_mix", "[1, 1]", "'curate.difficulty_mix'")]:
        code = main(["config", "set", key, value, "--workspace", root, "--by", "alice"])
        err = _one_line_error(capsys, code, expected)
        assert key != "model.lora_layer_ids" or "its 6 layers are 0-5" in err  # MiniLM
    assert workspace.config_path.read_text() == before
    assert main(["config", "set", "model.lora_layer_ids", "[4, 5]", "--workspace", root, "--by", "alice"]) == 0
    assert workspace.config().model.lora_layer_ids == [4, 5]


@pytest.mark.parametrize("name", ["token:ci", "two words", "", ".hidden", "a" * 65])
def test_user_names_cannot_pose_as_other_actors(workspace, tmp_path, capsys, name):
    """The audit log writes `token:NAME` for API tokens: a user named so could pass for one."""
    (tmp_path / "pw").write_text("long-enough-pw")
    code = main(["users", "add", name, "--role", "approver", "--workspace", str(workspace.root),
                 "--password-file", str(tmp_path / "pw")])
    _one_line_error(capsys, code, "user name" if name else "needs a NAME")
    assert workspace.store.users().empty
