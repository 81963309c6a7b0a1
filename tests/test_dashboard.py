"""The dashboard, driven the way a browser drives it (streamlit.testing.v1.AppTest) on real workspaces.

Every page needs a signed-in session: `open_page` signs in through the real form (argon2, the same users as
the CLI) unless told `user=None`.
"""
from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import nav, queries, session
from core import auth
from core.auth import REFUSED
from core.store import utcnow
from core.workspace import open_workspace
from tests.conftest import APPROVER, PASSWORD, VIEWER, VIEWER_PASSWORD

MAIN = Path(__file__).resolve().parents[1] / "app" / "main.py"
SIGN_IN_TITLE = "Evolab: sign in"
PASSWORD_FIELD = 1  # streamlit.proto.TextInput_pb2.TextInput.PASSWORD


@pytest.fixture
def pending(pending_ws):
    """A private copy, for tests that change the workspace."""
    return pending_ws


def sign_in(at: AppTest, name: str, password: str) -> AppTest:
    """Through the form, as a person does."""
    assert at.title[0].value == SIGN_IN_TITLE, "not at the sign-in form"
    at.text_input(key="signin_name").input(name)
    at.text_input(key="signin_password").input(password)
    return at.button(key="signin_submit").click().run()


def open_page(monkeypatch, root, page: str = "overview", user: str | None = APPROVER,
              password: str = PASSWORD) -> AppTest:
    monkeypatch.setenv(queries.ENV_VAR, str(root))
    at = AppTest.from_file(str(MAIN), default_timeout=60)
    at.run()
    if user is not None:
        sign_in(at, user, password)
        assert current(at) == (user, auth.authenticate(open_workspace(root).store, user, password, "test").role)
    if page != "overview":
        at.switch_page(nav.path(page)).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def current(at: AppTest) -> tuple[str, str] | None:
    who = at.session_state[session.USER] if session.USER in at.session_state else None
    return None if who is None else (who.name, who.role)


def buttons(at: AppTest) -> set[str]:
    """The labels of every button on screen, form submit and download buttons included."""
    return {b.label for b in at.button} | {b.label for b in at.get("download_button")}


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("title", "subheader", "markdown", "caption", "info", "warning", "success", "error")
             for e in getattr(at, kind)]
    parts += [f"{m.label} {m.value}" for m in at.metric]
    return "\n".join(map(str, parts))


def store_columns() -> set[str]:
    """Every column name of the store's schema, read from a database the migrations build."""
    import duckdb

    from core.store import MIGRATIONS

    con = duckdb.connect()
    for migration in MIGRATIONS:
        con.execute(migration)
    return {row[0] for row in con.execute("SELECT column_name FROM information_schema.columns").fetchall()}


def unreadable(at: AppTest) -> list[str]:
    """What a person should not see on the page: a table heading that is a store column name or a
    snake_case identifier, and a cell or metric that says None or nan."""
    import re

    raw, found = store_columns(), []
    for frame in (e.value for e in at.dataframe):
        for heading in map(str, frame.columns):
            if heading in raw or re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)+", heading):
                found.append(f"heading {heading!r}")
        cells = frame.astype(object).to_numpy().ravel().tolist()
        found += [f"cell {c!r} in {list(frame.columns)}" for c in cells
                  if c is None or (isinstance(c, float) and c != c) or str(c).strip().lower() in {"none", "nan", "nat"}]
    for m in at.metric:
        if str(m.value).strip().lower() in {"none", "nan", "nat"}:
            found.append(f"metric {m.label!r} = {m.value!r}")
    return found


@pytest.mark.parametrize("page", list(nav.PAGES))
def test_every_page_renders_on_an_empty_workspace(monkeypatch, workspace, page):
    auth.add_user(workspace.store, APPROVER, "approver", PASSWORD)
    at = open_page(monkeypatch, workspace.root, page)
    assert at.title[0].value and unreadable(at) == []
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
        assert list(at.dataframe[0].value["Cycle"]) == ["2", "1"]
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
        # the latest cycle's yield: per generator, the diagnosis' asks against what was produced, and the mix
        report = open_workspace(root).store.stage_runs(2).query("stage == 'curate'")["detail"].iloc[0]
        asks = json.loads(report)["asks"]
        assert asks and at.expander[0].label.startswith("Yield of cycle 2")
        table = next(d.value for d in at.dataframe if "Asked" in d.value.columns)
        for heading, field in (("Asked", "asked"), ("Produced", "produced")):  # cells read like "1,234"
            assert sum(int(v.replace(",", "")) for v in table[heading]) == sum(a[field] for a in asks.values())
        assert len(charts) == 1  # requested against achieved difficulty mix
    elif page == "approvals":
        assert f"Gate {gate_id}" in shown and "Checks passed" in shown and "95% CI" in str(at.metric[0].help)
        # the tests' cycles read a traffic probe nobody labels: the figure says so, and what that costs
        assert "no traffic labels (without them a version's gain over its parent tends to read short" in str(
            at.metric[0].help)
        assert "Forgetting guard" in shown  # the test's evidence: the closest classes, with their p-values
        forgetting = at.dataframe[0].value
        assert {"Class", "Broken", "Fixed", "Adjusted p"} <= set(forgetting.columns) and len(forgetting)
        recall = at.dataframe[1].value
        assert {"Production recall", "Candidate recall", "Change"} <= set(recall.columns) and len(recall) == 4
    elif page == "models":
        assert set(at.dataframe[0].value["Version"]) == {"v1", "v2"} and "production v1" in shown
        # v2 was never production: nothing to roll back to, so no rollback form at all
        assert "No version to roll back to" in shown and "Roll back" not in buttons(at)
    elif page == "audit":
        assert "Chain verified" in at.success[0].value and "gate opened" in set(at.dataframe[0].value["Action"])
    assert unreadable(at) == []  # no store column name, no None or nan, on any page


def test_synthetic_data_filters_and_pages_in_sql(monkeypatch, _pending_template):
    root, _ = _pending_template
    kept = open_workspace(root).store.samples(status="kept")
    at = open_page(monkeypatch, root, "synthetic_data")
    at.selectbox[2].select("kept").run()
    assert f"{len(kept)} matching samples" in texts(at)
    assert set(at.dataframe[0].value["Status"]) == {"kept"}
    at.selectbox[2].select(None)
    at.selectbox[4].select(25).run()
    total = len(open_workspace(root).store.samples())
    pages, last = -(-total // 25), total - 25 * (-(-total // 25) - 1)
    assert f"page 1 of {pages}" in texts(at) and len(at.dataframe[0].value) == 25
    at.get("pagination")[0].set_value(pages).run()
    assert f"page {pages} of {pages}" in texts(at) and len(at.dataframe[0].value) == last
    at.selectbox(key="difficulty").select(kept["difficulty"].iloc[0]).run()
    assert set(at.dataframe[0].value["Difficulty"]) == {str(kept["difficulty"].iloc[0])}
    at.selectbox(key="difficulty").select(None).run()
    word = kept.iloc[0]["text"].split()[0]
    at.text_input[0].input(word).run()
    assert at.dataframe[0].value["Text"].str.lower().str.contains(word.lower()).all()


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
    checks = next(d.value for d in at.dataframe if list(d.value.columns) == ["Check", "Value"])
    assert "few_shot" in set(checks["Value"])  # checks of an unknown shape: one row each, in words
    assert any("few_shot" in j.value for j in at.json)  # and as recorded, for an auditor


def test_training_marks_the_doctors_interventions(monkeypatch, pending):
    ws, _ = pending
    ws.store.record_train_event("cycle_2", 3, "lr_cut", "loss plateaued: learning rate halved")
    at = open_page(monkeypatch, ws.root, "training")
    assert list(at.dataframe[0].value["Intervention"]) == ["Lr cut"]  # a kind without a name of its own: in words
    figure = at.get("plotly_chart")[0].proto.spec
    assert '"Lr cut"' in figure and '"Validation accuracy"' in figure


def test_approve_through_the_form(monkeypatch, pending):
    """The signed-in approver decides without typing a name or a password again."""
    ws, gate_id = pending
    at = open_page(monkeypatch, ws.root, "approvals")
    assert not at.text_input, [t.label for t in at.text_input]  # no name, no password: the session is the author
    assert {"Approve", "Reject"} <= buttons(at) and "Override and approve" not in buttons(at)
    at.text_area(key=f"comment_{gate_id}").input("looked at the recall table")
    at.button(key=f"approve_{gate_id}").click().run()
    assert not at.exception
    gate = ws.store.gate(gate_id)
    assert (gate["status"], gate["decided_by"], gate["comment"]) == ("approved", APPROVER, "looked at the recall table")
    assert not gate["override"]
    assert f"Gate {gate_id} approved by {APPROVER}." in at.success[0].value
    assert "No gate waits" in texts(at) and at.dataframe[0].value["Gate"].iloc[0] == str(gate_id)
    assert at.dataframe[0].value["Decision"].iloc[0] == "approved"
    entry = ws.store.audit_entries().iloc[-1]
    assert (entry["actor"], entry["action"]) == (APPROVER, "gate_approved")


def test_failed_checks_offer_only_the_override_control(monkeypatch, pending):
    ws, _ = pending
    deadline = utcnow() + timedelta(hours=1)
    gid = ws.store.open_gate(2, "scaffold_adoption", "human",
                             {"passed": False, "reasons": ["gain -0.0100: not significant"]}, deadline)
    at = open_page(monkeypatch, ws.root, "approvals")
    assert "Checks failed: gain -0.0100" in texts(at)
    keys = {b.key for b in at.button}
    assert f"approve_{gid}" not in keys and f"reject_{gid}" in keys  # no plain Approve; rejecting needs no override
    assert f"override_{gid}" not in keys  # the override hides behind the checkbox that says the checks failed
    ack = at.checkbox(key=f"override_ack_{gid}")
    assert "checks of gate" in ack.label and "failed" in ack.label
    ack.check().run()
    override = at.button(key=f"override_{gid}")
    assert override.label == "Override and approve" and override.proto.type == "secondary"

    override.click().run()  # no reason written: refused, still pending
    assert "written reason" in at.error[0].value and ws.store.gate(gid)["status"] == "pending"

    at.checkbox(key=f"override_ack_{gid}").check()
    at.text_area(key=f"override_reason_{gid}").input("the scaffold fixes a legal wording issue")
    at.button(key=f"override_{gid}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    gate = ws.store.gate(gid)
    assert (gate["status"], gate["decided_by"], gate["override"]) == ("approved", APPROVER, True)
    assert gate["comment"] == "the scaffold fixes a legal wording issue"
    assert "as an override of its failed checks" in at.success[0].value
    decided = at.dataframe[-1].value.set_index("Gate")
    assert decided.loc[str(gid), "Decision"] == "approved (override: checks had failed)"
    assert ws.store.audit_entries().iloc[-1]["action"] == "gate_overridden"


def test_rollback_offers_only_versions_that_were_production(monkeypatch, pending):
    ws, _ = pending
    ws.store.promote(2, "v2", "engine", "promoted for the test")  # production v1 -> v2: v1 is now a target
    at = open_page(monkeypatch, ws.root, "models")
    assert at.selectbox(key="rollback_version").options == ["v1"]
    at.button(key="rollback_submit").click().run()
    assert not at.exception and ws.store.alias("production") == "v1"
    assert "v2 → v1" in at.success[0].value and f"by {APPROVER}" in at.success[0].value
    entry = ws.store.audit_entries().iloc[-1]
    assert (entry["action"], entry["actor"]) == ("rollback", APPROVER)


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
    target = int(at.dataframe[0].value["Sample"].iloc[0])
    at.multiselect(key="review_ids").select(target)
    at.radio(key="review_action").set_value("reject")
    at.text_input(key="review_comment").input("off topic")
    at.button(key="review_submit").click().run()
    assert not at.exception, [e.value for e in at.exception]
    row = ws.store.samples().set_index("id").loc[target]
    assert row["status"] == "rejected" and row["reviewed_by"] == APPROVER
    assert len(ws.store.samples(status="kept")) == len(kept) - 1
    assert f"1 samples rejected by {APPROVER}" in at.success[0].value

    at.button(key="export_prepare").click().run()
    assert not at.exception and at.get("download_button")[0].label == "Download (.parquet)"


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
    assert pairs.to_dict("records") == [{"Served": "shipping_delay", "Corrected to": "billing_question", "Times": "1"}]


# -- sign-in, roles, idle timeout, exposure -------------------------------------------------------------------
@pytest.mark.parametrize("page", list(nav.PAGES))
def test_nothing_but_the_sign_in_form_before_signing_in(monkeypatch, _pending_template, page):
    root, _ = _pending_template
    at = open_page(monkeypatch, root, page, user=None)
    assert [t.value for t in at.title] == [SIGN_IN_TITLE]
    assert [t.label for t in at.text_input] == ["Name", "Password"] and at.text_input[1].proto.type == PASSWORD_FIELD
    assert not at.dataframe and not at.metric and not at.get("plotly_chart") and not at.sidebar.button
    assert buttons(at) == {"Sign in"}


def test_sign_in_refuses_with_one_message_then_signs_in_and_out(monkeypatch, _pending_template):
    root, _ = _pending_template
    at = open_page(monkeypatch, root, user=None)
    sign_in(at, APPROVER, "wrong-password")
    assert [e.value for e in at.error] == [REFUSED] and current(at) is None
    assert at.text_input(key="signin_password").value == ""  # the password does not linger in the session
    sign_in(at, "nobody", "wrong-password")
    assert [e.value for e in at.error] == [REFUSED] and current(at) is None  # unknown names: the same words

    sign_in(at, APPROVER, PASSWORD)
    assert not at.error and current(at) == (APPROVER, "approver") and at.title[0].value == "Overview"
    assert f"Signed in as **{APPROVER}** (approver)" in [m.value for m in at.sidebar.markdown]
    assert open_workspace(root).store.audit_entries().iloc[-1][["actor", "action"]].tolist() == [APPROVER,
                                                                                                  "signed_in"]
    for page in ("approvals", "audit"):  # sign-out sits in the sidebar of every page
        at.switch_page(nav.path(page)).run()
        assert at.sidebar.button(key="sign_out").label == "Sign out"
    at.sidebar.button(key="sign_out").click().run()
    assert current(at) is None and at.title[0].value == SIGN_IN_TITLE and buttons(at) == {"Sign in"}


def test_a_viewer_reads_every_page_without_a_control(monkeypatch, pending):
    ws, gate_id = pending
    ws.store.promote(2, "v2", "engine", "promoted for the test")  # so that a rollback target exists
    ws.store.open_gate(2, "scaffold_adoption", "human", {"passed": False, "reasons": ["gain -0.01"]},
                       utcnow() + timedelta(hours=1))
    at = open_page(monkeypatch, ws.root, user=VIEWER, password=VIEWER_PASSWORD)
    assert f"Signed in as **{VIEWER}** (viewer)" in [m.value for m in at.sidebar.markdown]
    for page in nav.PAGES:
        at.switch_page(nav.path(page)).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert buttons(at) == {"Sign out"}, (page, buttons(at))
        assert not [c for c in at.checkbox if c.key.startswith("override_ack_")], page
        if page in ("approvals", "models", "synthetic_data"):
            assert f"signed in as {VIEWER} (viewer): read only" in texts(at), page
    at.switch_page(nav.path("approvals")).run()
    assert f"Gate {gate_id}" in texts(at) and "Forgetting guard" in texts(at)  # the evidence, not the decision
    assert not at.text_area and not [t for t in at.text_input if t.proto.type == PASSWORD_FIELD]


def test_a_role_change_or_removal_reaches_a_signed_in_session(monkeypatch, pending):
    ws, gate_id = pending
    at = open_page(monkeypatch, ws.root, "approvals")
    assert f"approve_{gate_id}" in {b.key for b in at.button}
    auth.add_user(ws.store, "bob", "approver", "bob-secret")  # the store keeps one approver at least
    ws.store.set_role(APPROVER, "viewer", "engine")
    at.run()
    assert current(at) == (APPROVER, "viewer") and buttons(at) == {"Sign out"}
    assert f"signed in as {APPROVER} (viewer): read only" in texts(at)
    ws.store.remove_user(APPROVER, "engine")
    at.run()
    assert current(at) is None and at.title[0].value == SIGN_IN_TITLE


def test_an_idle_session_asks_for_the_password_before_acting(monkeypatch, pending):
    ws, gate_id = pending
    config = ws.config()
    config.ui.idle_timeout_minutes = 0.5  # read from the workspace's config, not a constant
    ws.save_config(config)
    at = open_page(monkeypatch, ws.root, "approvals")
    assert "Idle for more than" not in texts(at)

    # The tab sat idle; then the person clicks Approve on the page still on screen: refused before acting.
    at.session_state[session.LAST_ACTIVE] = time.time() - 40
    at.button(key=f"approve_{gate_id}").click().run()
    assert f"Gate {gate_id}: idle for more than 0.5 minutes" in at.error[0].value
    assert ws.store.gate(gate_id)["status"] == "pending"
    assert "Idle for more than 0.5 minutes: enter your password again" in at.warning[0].value
    assert f"approve_{gate_id}" not in {b.key for b in at.button}  # no control until the password is typed
    at.run()  # reading on does not wake it
    assert f"approve_{gate_id}" not in {b.key for b in at.button} and at.text_input(key="confirm_password")

    at.text_input(key="confirm_password").input("wrong-password")
    at.button(key="confirm_submit").click().run()
    assert REFUSED in [e.value for e in at.error] and f"approve_{gate_id}" not in {b.key for b in at.button}
    at.text_input(key="confirm_password").input(PASSWORD)
    at.button(key="confirm_submit").click().run()
    assert not at.warning and not at.error
    at.button(key=f"approve_{gate_id}").click().run()
    gate = ws.store.gate(gate_id)
    assert (gate["status"], gate["decided_by"]) == ("approved", APPROVER)


def test_idle_timeout_is_a_config_key():
    from core.config import Config, ConfigError, parse_config

    assert Config().ui.idle_timeout_minutes == 30
    assert parse_config({"ui": {"idle_timeout_minutes": 5}}).ui.idle_timeout_minutes == 5
    with pytest.raises(ConfigError, match="ui.idle_timeout_minutes"):
        parse_config({"ui": {"idle_timeout_minutes": 0}})


@pytest.mark.parametrize("host,warns", [("127.0.0.1", False), ("localhost", False), ("::1", False),
                                        ("0.0.0.0", True), ("192.168.1.20", True), ("::", True),
                                        ("evolab.example", True)])
def test_serving_beyond_loopback_warns_on_stderr(monkeypatch, capsys, tmp_path, host, warns):
    from core import demo

    started = []

    class FakeStreamlit:
        def __init__(self, argv, **_):
            started.append(argv)

        def wait(self, timeout=None):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr(demo.subprocess, "Popen", FakeStreamlit)
    monkeypatch.setattr(demo, "_stop_on_sigterm", lambda: None)
    assert demo.serve_dashboard(tmp_path, 8600, host) == 0
    assert started[0][started[0].index("--server.address") + 1] == host
    assert started[0][started[0].index("--client.toolbarMode") + 1] == "viewer"  # no Deploy button, no dev menu
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    if warns:
        assert len(err) == 1 and host in err[0] and "reachable from the network" in err[0] and "TLS" in err[0]
    else:
        assert err == []
    assert "warning" not in captured.out
