"""The CLI contract that later issues and benchmarks rely on, run as a user runs it."""
import json

import pandas as pd

import pytest

from core.cli import main
from tests.conftest import run_cli


@pytest.mark.slow
def test_predict_keeps_input_columns_and_adds_prediction(baseline_ws, tmp_path):
    src = tmp_path / "in.csv"
    pd.DataFrame({"ticket": [1, 2], "body": ["my card payment was declined", "where is my parcel"]}).to_csv(
        src, index=False)
    out = tmp_path / "out.csv"
    result = run_cli("predict", "--workspace", str(baseline_ws.root), "--input", str(src), "--output", str(out),
                     "--text-col", "body", check=True)
    assert "2 predictions from v1 with scaffold analyze_plan_execute" in result.stdout
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["ticket", "body", "prediction", "confidence", "abstained"]
    assert not frame["abstained"].any()  # the default scaffold never routes to a person
    assert set(frame["prediction"]) <= set(baseline_ws.store.labels())
    assert frame["confidence"].between(0, 1).all()


def test_status_json(baseline_ws, capsys):
    assert main(["status", "--workspace", str(baseline_ws.root), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["production"] == "v1" and info["cycles"][0]["kind"] == "baseline"
    assert info["cycles"][0]["status"] == "done" and info["pending_gates"] == []


@pytest.mark.slow
def test_rollback_moves_production_and_keeps_history(weak_baseline_ws, capsys, monkeypatch):
    from core import auth, cycle

    auth.add_user(weak_baseline_ws.store, "dave", "approver", "dave-secret")
    auth.add_user(weak_baseline_ws.store, "vera", "viewer", "vera-secret")
    monkeypatch.setenv("EVOLAB_PASSWORD", "vera-secret")
    config = weak_baseline_ws.config()
    config.gates.max_recall_drop = 1.0
    weak_baseline_ws.save_config(config)
    cycle.evolve(weak_baseline_ws, cycles=1, progress=False)
    store = weak_baseline_ws.store
    assert store.alias("production") == "v2"
    assert main(["rollback", "--workspace", str(weak_baseline_ws.root), "--to", "v1", "--by", "vera"]) == 1
    assert "not an approver" in capsys.readouterr().err and store.alias("production") == "v2"
    monkeypatch.setenv("EVOLAB_PASSWORD", "dave-secret")
    assert main(["rollback", "--workspace", str(weak_baseline_ws.root), "--to", "v1", "--by", "dave"]) == 0
    assert store.alias("production") == "v1"
    history = store.alias_history()
    prod = history[history.name == "production"]
    assert prod["version"].tolist() == ["v1", "v2", "v1"] and prod["actor"].iloc[-1] == "dave"
    assert main(["rollback", "--workspace", str(weak_baseline_ws.root), "--to", "v9", "--by", "dave"]) == 1
    assert "no model version 'v9'" in capsys.readouterr().err


def test_commands_on_a_missing_workspace_fail_cleanly(tmp_path):
    result = run_cli("status", "--workspace", str(tmp_path / "nothing"))
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: no Evolab workspace")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "nothing").exists()
