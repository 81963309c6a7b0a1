"""The dashboard, driven the way a browser drives it (streamlit.testing.v1.AppTest) on real workspaces."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import nav, queries
from core.store import utcnow
from core.workspace import open_workspace
from tests.conftest import APPROVER, PASSWORD

MAIN = Path(__file__).resolve().parents[1] / "app" / "main.py"


@pytest.fixture
def pending(pending_ws):
    """A private copy, for tests that change the workspace."""
    return pending_ws


def open_page(monkeypatch, root, page: str = "overview") -> AppTest:
    monkeypatch.setenv(queries.ENV_VAR, str(root))
    at = AppTest.from_file(str(MAIN), default_timeout=60)
    at.run()
    if page != "overview":
        at.switch_page(nav.path(page)).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("title", "subheader", "markdown", "caption", "info", "warning", "success", "error")
             for e in getattr(at, kind)]
    parts += [f"{m.label} {m.value}" for m in at.metric]
    return "\n".join(map(str, parts))


@pytest.mark.parametrize("page", list(nav.PAGES))
def test_every_page_renders_on_an_empty_workspace(monkeypatch, workspace, page):
    at = open_page(monkeypatch, workspace.root, page)
    assert at.title[0].value
    if page == "overview":
        assert f"python -m core evolve --workspace {workspace.root}" in at.info[0].value


@pytest.mark.parametrize("page", list(nav.PAGES))
def test_every_page_renders_on_a_workspace_waiting_at_a_gate(monkeypatch, _pending_template, page):
    root, gate_id = _pending_template
    at = open_page(monkeypatch, root, page)
    shown = texts(at)
    charts = at.get("plotly_chart")
    if page == "overview":
        assert "Production v1" in shown and "Candidate v2" in shown
        assert f"gate {gate_id}" in at.warning[0].value
        assert at.get("page_link") and len(charts) == 1
        assert list(at.dataframe[0].value["id"]) == [2, 1]
    elif page == "training":
        # the run's curves, and the comparison of the last two runs (the baseline's and cycle 2's)
        assert at.selectbox[0].value == "cycle_2" and len(charts) == 2
        assert at.multiselect(key="compare_runs").value == ["cycle_1", "cycle_2"]
    elif page == "diagnosis":
        # error map, activations, head importance, and the confusion heatmap of production
        assert at.selectbox[1].value == "v1" and len(charts) == 4
        assert "Token attributions" in shown and "delta" in shown and "LoRA on layers" in shown
    elif page == "synthetic_data":
        assert f"{len(open_workspace(root).store.samples())} matching samples" in shown
    elif page == "approvals":
        assert f"Gate {gate_id}" in shown and "Checks passed" in shown and "95% CI" in str(at.metric[0].help)
        assert "Forgetting guard" in shown  # the test's evidence: the closest classes, with their p-values
        forgetting = at.dataframe[0].value
        assert {"class", "broken", "fixed", "adjusted p"} <= set(forgetting.columns) and len(forgetting)
        recall = at.dataframe[1].value
        assert {"production_recall", "candidate_recall", "change"} <= set(recall.columns) and len(recall) == 4
    elif page == "models":
        assert set(at.dataframe[0].value["version"]) == {"v1", "v2"} and "production v1" in shown
    elif page == "audit":
        assert "Chain verified" in at.success[0].value and "gate_opened" in set(at.dataframe[0].value["action"])


def test_synthetic_data_filters_and_pages_in_sql(monkeypatch, _pending_template):
    root, _ = _pending_template
    kept = open_workspace(root).store.samples(status="kept")
    at = open_page(monkeypatch, root, "synthetic_data")
    at.selectbox[2].select("kept").run()
    assert f"{len(kept)} matching samples" in texts(at)
    assert set(at.dataframe[0].value["status"]) == {"kept"}
    at.selectbox[2].select(None)
    at.selectbox[4].select(25).run()
    total = len(open_workspace(root).store.samples())
    pages, last = -(-total // 25), total - 25 * (-(-total // 25) - 1)
    assert f"page 1 of {pages}" in texts(at) and len(at.dataframe[0].value) == 25
    at.get("pagination")[0].set_value(pages).run()
    assert f"page {pages} of {pages}" in texts(at) and len(at.dataframe[0].value) == last
    at.selectbox(key="difficulty").select(kept["difficulty"].iloc[0]).run()
    assert set(at.dataframe[0].value["difficulty"]) == {kept["difficulty"].iloc[0]}
    at.selectbox(key="difficulty").select(None).run()
    word = kept.iloc[0]["text"].split()[0]
    at.text_input[0].input(word).run()
    assert at.dataframe[0].value["text"].str.lower().str.contains(word.lower()).all()


def test_approvals_show_the_evidence_of_every_gate_kind(monkeypatch, pending):
    ws, gate_id = pending
    deadline = utcnow() + timedelta(hours=1)
    drift = ws.store.open_gate(2, "drift_review", "human", {"passed": False, "verdict": "review",
                                                             "reasons": ["held-out flip rate 0.300 > 0.25"]}, deadline)
    other = ws.store.open_gate(2, "scaffold_adoption", "human", {"passed": True, "reasons": ["gain +0.02"],
                                                                  "scaffold": "few_shot"}, deadline)
    at = open_page(monkeypatch, ws.root, "approvals")
    shown = texts(at)
    for gid in (gate_id, drift, other):
        assert f"Gate {gid}" in shown and at.button(key=f"approve_{gid}")
    assert "Checks failed: held-out flip rate 0.300" in shown and "Held-out flip rate" in shown
    assert at.json and "few_shot" in at.json[0].value


def test_training_marks_the_doctors_interventions(monkeypatch, pending):
    ws, _ = pending
    ws.store.record_train_event("cycle_2", 3, "lr_cut", "loss plateaued: learning rate halved")
    at = open_page(monkeypatch, ws.root, "training")
    assert list(at.dataframe[0].value["kind"]) == ["lr_cut"]
    figure = at.get("plotly_chart")[0].proto.spec
    assert '"lr_cut"' in figure and '"val_acc"' in figure


def test_approve_through_the_form(monkeypatch, pending):
    ws, gate_id = pending
    at = open_page(monkeypatch, ws.root, "approvals")
    at.text_input(key=f"by_{gate_id}").input(APPROVER)
    at.text_input(key=f"password_{gate_id}").input("wrong")
    at.button(key=f"approve_{gate_id}").click().run()
    assert "wrong password" in at.error[0].value and ws.store.gate(gate_id)["status"] == "pending"

    at.text_input(key=f"by_{gate_id}").input(APPROVER)
    at.text_input(key=f"password_{gate_id}").input(PASSWORD)
    at.text_area(key=f"comment_{gate_id}").input("looked at the recall table")
    at.button(key=f"approve_{gate_id}").click().run()
    assert not at.exception
    gate = ws.store.gate(gate_id)
    assert (gate["status"], gate["decided_by"], gate["comment"]) == ("approved", APPROVER, "looked at the recall table")
    assert f"Gate {gate_id} approved" in at.success[0].value
    assert "No gate waits" in texts(at) and at.dataframe[0].value["id"].iloc[0] == gate_id


def test_rollback_through_the_form(monkeypatch, pending):
    ws, _ = pending
    at = open_page(monkeypatch, ws.root, "models")
    at.selectbox(key="rollback_version").select("v2")
    at.text_input(key="rollback_by").input(APPROVER)
    at.text_input(key="rollback_password").input(PASSWORD)
    at.button[0].click().run()
    assert not at.exception and ws.store.alias("production") == "v2"
    assert "v1 → v2" in at.success[0].value
    assert ws.store.audit_entries().iloc[-1]["action"] == "rollback"


def test_workspace_comes_from_the_command_line_then_the_environment(monkeypatch):
    monkeypatch.setenv(queries.ENV_VAR, "/from/env")
    assert queries.workspace_from_args(["--workspace", "/from/args"]) == "/from/args"
    assert queries.workspace_from_args(["-q", "tests"]) == "/from/env"
    monkeypatch.delenv(queries.ENV_VAR)
    assert queries.workspace_from_args([]) is None


def test_review_samples_through_the_form(monkeypatch, pending):
    ws, _ = pending
    kept = ws.store.samples(status="kept")
    at = open_page(monkeypatch, ws.root, "synthetic_data")
    at.selectbox[2].select("kept").run()
    target = int(at.dataframe[0].value["id"].iloc[0])
    at.multiselect(key="review_ids").select(target)
    at.radio(key="review_action").set_value("reject")
    at.text_input(key="review_by").input(APPROVER)
    at.text_input(key="review_password").input(PASSWORD)
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    row = ws.store.samples().set_index("id").loc[target]
    assert row["status"] == "rejected" and row["reviewed_by"] == APPROVER
    assert len(ws.store.samples(status="kept")) == len(kept) - 1


def test_overview_shows_production_traffic(monkeypatch, pending):
    import pandas as pd

    from core.store import Store

    ws, _ = pending
    at = open_page(monkeypatch, ws.root)
    assert "No production traffic yet" in texts(at)
    now = utcnow()
    preds = pd.DataFrame([{"id": f"p{i}", "at": now, "text": f"text {i}", "label": "shipping_delay",
                           "confidence": 0.9, "model_version": "v1", "scaffold_version": "direct", "latency_ms": 5.0}
                          for i in range(3)], columns=Store.PREDICTION_COLUMNS)
    feedback = pd.DataFrame([{"prediction_id": "p0", "label": "billing_question", "at": now, "actor": "carol"},
                             {"prediction_id": "p1", "label": "shipping_delay", "at": now, "actor": "carol"}],
                            columns=Store.FEEDBACK_COLUMNS)
    ws.store.log_production(preds, feedback)
    queries.clear()
    at = open_page(monkeypatch, ws.root)
    shown = texts(at)
    assert "Requests 3" in shown and "Feedback 2" in shown and "Corrected errors 1" in shown
    pairs = at.dataframe[-1].value
    assert pairs.to_dict("records") == [{"served": "shipping_delay", "corrected": "billing_question", "n": 1}]
