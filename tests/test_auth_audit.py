"""Approvals only by approvers with their password; the audit log's keyed chain finds edits and deletions."""
import duckdb
import pytest

from core import audit, auth
from core.cli import main
from tests.conftest import approve_as
from core.store import Store


@pytest.fixture
def pending(pending_ws):
    """A gate waiting for a person; alice (alice-secret) approves, victor only views."""
    ws, gate_id = pending_ws
    auth.add_user(ws.store, "victor", "viewer", "victor-secret")
    return ws, gate_id


def test_password_is_stored_as_a_salted_slow_hash(workspace):
    auth.add_user(workspace.store, "alice", "approver", "alice-secret")
    auth.add_user(workspace.store, "bob", "approver", "alice-secret")
    a, b = workspace.store.user("alice")["password_hash"], workspace.store.user("bob")["password_hash"]
    assert a.startswith("$argon2id$") and a != b and "alice-secret" not in a


@pytest.mark.parametrize("name,password,why", [("victor", "victor-secret", "'victor' is a viewer, not an approver"),
                                               ("alice", "guess", "wrong name or password"),
                                               ("mallory", "x", "wrong name or password")])
@pytest.mark.slow
def test_refusals_are_refused_and_logged(pending, monkeypatch, capsys, name, password, why):
    ws, gid = pending
    monkeypatch.setenv("EVOLAB_PASSWORD", password)
    assert main(["approve", "--workspace", str(ws.root), str(gid), "--by", name]) == 1
    # unknown names and wrong passwords read the same: the refusal does not say who exists
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {why}"
    assert ws.store.gate(gid)["status"] == "pending"
    log = ws.store.audit_entries()
    assert log.iloc[-1]["action"] == "auth_refused" and log.iloc[-1]["actor"] == name


def test_approver_decides_with_password(pending, monkeypatch):
    ws, gid = pending
    monkeypatch.setenv("EVOLAB_PASSWORD", "alice-secret")
    assert main(["reject", "--workspace", str(ws.root), str(gid), "--by", "alice", "--comment", "no"]) == 0
    assert ws.store.gate(gid)["status"] == "rejected" and ws.store.gate(gid)["decided_by"] == "alice"
    with pytest.raises(Exception, match="already decided"):
        approve_as(ws, gid)


def test_audit_verify_finds_an_edited_row(pending, capsys):
    ws, _ = pending
    assert main(["audit", "verify", "--workspace", str(ws.root)]) == 0
    con = duckdb.connect(str(ws.db))
    con.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
    con.close()
    assert main(["audit", "verify", "--workspace", str(ws.root)]) == 1
    assert "entry 3" in capsys.readouterr().err and audit.verify(ws.store).case == "altered"


@pytest.mark.parametrize("seq", ["middle", "last"])
def test_audit_verify_finds_a_deleted_row(pending, seq):
    ws, _ = pending
    n = len(ws.store.audit_entries())
    target = 4 if seq == "middle" else n
    con = duckdb.connect(str(ws.db))
    con.execute("DELETE FROM audit_log WHERE seq = ?", [target])
    con.close()
    report = audit.verify(Store(ws.db))
    assert not report.ok and report.first_bad_seq == target and "deleted" in report.problem
    assert report.case == ("deleted" if seq == "middle" else "truncated")  # the last one: only the head shows it
