"""Drift review stops a harmful candidate; gates hold under concurrency; only safe files load."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from core import auth, cycle, gates, model as M, registry
from core.cli import main
from core.setup import add_guardrails
from tests.conftest import ROOT

PROBES = ["my account was hacked and I cannot log in", "someone hacked my account and changed the password",
          "hacked account, I can't sign in any more", "my profile got hacked, please lock my account"]


def _plant_harm(ws, tmp_path, monkeypatch, policy):
    """Guardrails that production passes, then a candidate trained to route them to billing."""
    prod = registry.load_alias(ws)
    labels = np.asarray(prod.labels, dtype=object)
    passing = [t for t, p in zip(PROBES, labels[M.predict_proba(prod, PROBES).argmax(1)]) if p == "account_access"]
    assert passing, "precondition: production routes the hacked-account probes to account_access"
    probes = tmp_path / "guardrails.csv"
    pd.DataFrame({"text": passing, "expected_label": "account_access",
                  "note": "hacked accounts must reach the access team"}).to_csv(probes, index=False)
    add_guardrails(ws, probes, "test")
    config = ws.config()
    config.gates.drift_review.policy = policy
    config.drift.max_guardrail_drop = 0.0
    config.train.epochs = 6
    ws.save_config(config)
    original = cycle._training_data

    def poisoned(ws_, cycle_row):
        data = original(ws_, cycle_row)
        poison = pd.DataFrame({"text": [f"{t} (ticket {i})" for i in range(12) for t in PROBES],
                               "label": "billing_question", "source": "synthetic"})
        return pd.concat([data, poison], ignore_index=True)

    monkeypatch.setattr(cycle, "_training_data", poisoned)


@pytest.mark.slow
def test_harmful_candidate_blocked_under_auto(baseline_ws, tmp_path, monkeypatch):
    _plant_harm(baseline_ws, tmp_path, monkeypatch, "auto")
    outcome = cycle.evolve(baseline_ws, cycles=1, auto_approve=False, progress=False)[-1]
    store = baseline_ws.store
    report = store.drift_report(outcome.cycle_id)["report"]
    assert report["verdict"] == "fail" and any("guardrail" in r for r in report["reasons"])
    assert report["guardrails"]["failures"]
    assert outcome.status == "rejected"
    gate = store.gate_for(outcome.cycle_id, "drift_review")
    assert gate["status"] == "rejected" and gate["automatic"]
    assert store.gate_for(outcome.cycle_id, "promotion") is None  # never reached promotion
    assert store.alias("production") == "v1"


@pytest.mark.slow
def test_harmful_candidate_waits_under_human_and_is_never_promoted(baseline_ws, tmp_path, monkeypatch, capsys):
    _plant_harm(baseline_ws, tmp_path, monkeypatch, "human")
    outcome = cycle.evolve(baseline_ws, cycles=1, progress=False)[-1]
    assert outcome.status == "waiting" and "drift_review gate" in outcome.message
    store = baseline_ws.store
    assert store.alias("production") == "v1"
    # --auto-approve never decides a gate whose policy is human, and says so
    again = cycle.resume(baseline_ws, auto_approve=True, progress=False)
    assert again.status == "waiting" and "never decides a gate whose policy is human" in again.message
    assert store.gate(outcome.gate_id)["status"] == "pending" and store.alias("production") == "v1"
    gates.decide(store, outcome.gate_id, False, "carol", "guardrails must hold")
    final = cycle.resume(baseline_ws, progress=False)
    assert final.status == "rejected" and store.alias("production") == "v1"
    assert main(["drift", "--workspace", str(baseline_ws.root)]) == 0
    out = capsys.readouterr().out
    assert "FAIL" in out and "guardrail" in out


def test_guardrails_with_unknown_labels_are_refused(baseline_ws, tmp_path, capsys, monkeypatch):
    path = tmp_path / "g.csv"
    path.write_text("text,expected_label,note\nmy card was stolen,lost_or_stolen,route to fraud\n")
    auth.add_user(baseline_ws.store, "alice", "approver", "alice-secret")
    monkeypatch.setenv("EVOLAB_PASSWORD", "alice-secret")
    assert main(["guardrails", "add", "--workspace", str(baseline_ws.root), "--file", str(path), "--by", "alice"]) == 1
    assert "'lost_or_stolen'" in capsys.readouterr().err
    assert baseline_ws.store.guardrails().empty


@pytest.mark.slow
def test_two_processes_approving_at_once_yield_one_promotion(pending_ws):
    baseline_ws, gate_id = pending_ws  # alice (alice-secret) is an approver already
    auth.add_user(baseline_ws.store, "bob", "approver", "bob-secret-1")
    keys = {"XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"]}  # where the workspace's audit key is
    procs = [subprocess.Popen([sys.executable, "-m", "core", "approve", "--workspace", str(baseline_ws.root),
                               str(gate_id), "--by", name], cwd=ROOT, env={"EVOLAB_PASSWORD": pw,
                                                                                   "PATH": "/usr/bin:/bin", **keys},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, pw in (("alice", "alice-secret"), ("bob", "bob-secret-1"))]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 1], results
    assert any("already decided" in err for _, err in results)
    resumes = [subprocess.Popen([sys.executable, "-m", "core", "resume", "--workspace", str(baseline_ws.root),
                                 "--quiet"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    for p in resumes:
        p.wait(timeout=300)
    store = baseline_ws.store
    assert store.alias("production") == "v2"
    promoted = store.audit_entries()
    assert (promoted["action"] == "promoted").sum() == 2  # the baseline's and this one, exactly once


def test_config_changes_are_audited(baseline_ws):
    text = baseline_ws.config_path.read_text()
    baseline_ws.config_path.write_text(text.replace("epochs = 2.0", "epochs = 3.0"))  # a hand edit
    from core.workspace import audit_config

    changes = audit_config(baseline_ws, "engine")
    assert changes == {"train.epochs": {"from": 2.0, "to": 3.0}}
    log = baseline_ws.store.audit_entries()
    assert log.iloc[-1]["action"] == "config_changed" and "train.epochs" in log.iloc[-1]["detail"]
    assert audit_config(baseline_ws, "engine") == {}  # nothing new, nothing logged


def test_planted_pickle_next_to_weights_is_refused(baseline_ws):
    version = baseline_ws.store.alias("production")
    (baseline_ws.models / version / "adapter" / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(M.ModelIntegrityError, match="unexpected file adapter/adapter_model.bin"):
        registry.load(baseline_ws, version)
