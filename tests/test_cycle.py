"""The evolution cycle end to end on real data and real training, and its gates."""
import json

import pytest

from core import cycle, gates
from core.cli import main
from core.config import GateConfig
from core.workspace import engine_lock


@pytest.mark.slow
def test_baseline_then_evolve_autonomously(baseline_ws):
    store = baseline_ws.store
    assert store.alias("production") == "v1"
    outcomes = cycle.evolve(baseline_ws, cycles=1, progress=False)
    assert [o.status in ("done", "rejected") for o in outcomes] == [True]
    cid = outcomes[0].cycle_id
    stages = set(store.stage_runs(cid)["stage"])
    assert {"diagnose", "curate", "data_review", "train", "evaluate", "drift", "gate"} <= stages
    assert store.drift_report(cid)["report"]["verdict"] == "pass"
    samples = store.samples(cid)
    # every pool row is a sample with a reason; the traffic probe's rows are in no sample
    probe = store.traffic_probe()
    assert len(probe) == 10
    assert (samples["generator"] == "self_label").sum() == len(store.unlabeled_pool()) == 30
    assert not samples["text"].isin(probe["text"]).any()
    assert samples["reason"].str.len().gt(0).all()
    assert not store.diagnoses(cid).empty
    version = store.version("v2")
    assert version["parent_version"] == "v1"
    assert version["lineage"]["rows_by_source"]["seed"] == len(store.examples("seed"))  # replay of the seed
    gate = store.gate_for(cid, "promotion")
    assert gate["automatic"] and gate["decided_by"] == gates.AUTO_ACTOR and gate["policy"] == "auto"
    # the figure the gate shows is the candidate's expected accuracy on traffic, with its interval
    traffic = store.evaluation("v2", "traffic")["detail"]
    assert traffic["n"] == 10 and traffic["ci_low"] <= traffic["accuracy"] <= traffic["ci_high"]
    assert gate["checks"]["estimate"] == gate["checks"]["traffic"]["candidate"] == traffic
    assert gate["checks"]["traffic"]["production"] == store.evaluation("v1", "traffic")["detail"]
    expected = "v2" if gate["status"] == "approved" else "v1"
    assert store.alias("production") == expected
    assert not store.metrics(f"cycle_{cid}").empty


def _human_promotion(ws):
    config = ws.config()
    config.gates.max_recall_drop = 1.0  # on the weak baseline the checks pass: the human decision is tested
    config.gates.promotion.policy = "human"
    ws.save_config(config)


@pytest.mark.slow
def test_human_gate_waits_then_approval_promotes(weak_baseline_ws, capsys, monkeypatch, tmp_path):
    _human_promotion(weak_baseline_ws)
    monkeypatch.setenv("EVOLAB_PASSWORD", "correct horse")
    (tmp_path / "pw").write_text("correct horse")
    for name in ("alice", "bob"):  # the first approver needs no credential; the second needs alice's
        assert main(["users", "add", name, "--role", "approver", "--workspace", str(weak_baseline_ws.root),
                     "--password-file", str(tmp_path / "pw"), *(["--by", "alice"] if name == "bob" else [])]) == 0
    root = str(weak_baseline_ws.root)
    assert main(["evolve", "--workspace", root, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "waits at promotion gate" in out
    store = weak_baseline_ws.store
    pending = store.gates("pending")
    assert len(pending) == 1 and store.open_cycle()["status"] == "waiting"
    gid = int(pending["id"][0])
    assert main(["gates", "--workspace", root, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[-1]["status"] == "pending" and listed[-1]["checks"]["passed"]
    assert main(["evolve", "--workspace", root, "--quiet"]) == 0  # still waiting: nothing promoted
    assert store.alias("production") == "v1"
    assert main(["approve", "--workspace", root, str(gid), "--by", "alice", "--comment", "looks good"]) == 0
    assert main(["approve", "--workspace", root, str(gid), "--by", "bob"]) == 1  # decided twice
    assert "already decided" in capsys.readouterr().err
    assert main(["resume", "--workspace", root, "--quiet"]) == 0
    assert store.alias("production") == "v2"
    history = store.alias_history()
    assert history[history.name == "production"]["actor"].tolist()[-1] == "alice"
    actions = store.audit_entries()["action"].tolist()
    assert "gate_approved" in actions and "promoted" in actions


@pytest.mark.slow
def test_rejected_candidate_is_never_deployed(weak_baseline_ws):
    _human_promotion(weak_baseline_ws)
    outcome = cycle.evolve(weak_baseline_ws, cycles=1, progress=False)[-1]
    assert outcome.status == "waiting"
    gates.decide(weak_baseline_ws.store, outcome.gate_id, False, "carol", "not convinced")
    final = cycle.resume(weak_baseline_ws, progress=False)
    assert final.status == "rejected"
    assert weak_baseline_ws.store.alias("production") == "v1"
    assert weak_baseline_ws.store.alias("candidate") is None


def test_second_engine_on_the_same_workspace_is_refused(baseline_ws, capsys):
    with engine_lock(baseline_ws):
        assert main(["evolve", "--workspace", str(baseline_ws.root), "--quiet"]) == 1
    assert "already evolving" in capsys.readouterr().err
    assert baseline_ws.store.open_cycle() is None  # nothing was started


@pytest.mark.slow
def test_gate_timeout_rejects(weak_baseline_ws):
    config = weak_baseline_ws.config()
    config.gates.max_recall_drop = 1.0
    config.gates.promotion.policy = "human"
    config.gates.promotion.timeout_hours = 1e-9
    weak_baseline_ws.save_config(config)
    outcome = cycle.evolve(weak_baseline_ws, cycles=1, progress=False)[-1]
    assert outcome.status == "rejected"
    gate = weak_baseline_ws.store.gate_for(outcome.cycle_id, "promotion")
    assert gate["status"] == "rejected" and "timed out" in gate["comment"]


def test_policies():
    passed = {"passed": True, "within_thresholds": False, "reasons": []}
    failed = {"passed": False, "reasons": ["x"]}
    assert gates.automatic_verdict(GateConfig(policy="human"), passed, False).action == "wait"
    # --auto-approve never decides a human gate, and the waiting message says so
    flagged = gates.automatic_verdict(GateConfig(policy="human"), passed, True)
    assert flagged.action == "wait" and "never decides a gate whose policy is human" in flagged.comment
    # a failed promotion under `human` waits for a person, who may override it with a reason (issue 26, point 8)
    assert gates.automatic_verdict(GateConfig(policy="human"), failed, True).action == "wait"
    assert gates.automatic_verdict(GateConfig(policy="auto"), failed, False).action == "reject"
    assert gates.automatic_verdict(GateConfig(policy="auto"), passed, False).action == "approve"
    under = GateConfig(policy="auto_under_thresholds")
    assert gates.automatic_verdict(under, passed, False).action == "wait"
    assert gates.automatic_verdict(under, {**passed, "within_thresholds": True}, False).action == "approve"
    # data and drift review: a failed check is put to a person under `human` and `auto_under_thresholds` (it
    # is outside the thresholds), rejected under `auto`
    assert gates.automatic_verdict(GateConfig(policy="human"), failed, False, hard=False).action == "wait"
    assert gates.automatic_verdict(under, failed, False, hard=False).action == "wait"
    assert gates.automatic_verdict(GateConfig(policy="auto"), failed, False, hard=False).action == "reject"
    assert gates.automatic_verdict(GateConfig(policy="human"), failed, True, hard=False).action == "wait"
