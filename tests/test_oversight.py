"""Oversight that cannot be bypassed, through the real CLI: each test is a hole the previous version left open."""
from __future__ import annotations

import json

import duckdb
import pandas as pd
import pytest

from core import auth, cycle
from core.cli import main
from tests.conftest import APPROVER, PASSWORD, approve_as, fast_config, make_workspace


def _cli(monkeypatch, capsys, *args, password: str | None = PASSWORD):
    if password is None:
        monkeypatch.delenv("EVOLAB_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("EVOLAB_PASSWORD", password)
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


# -- 1: --auto-approve never decides a human gate; autonomy is a recorded choice ------------------------------
def test_auto_approve_leaves_a_human_promotion_gate_to_a_person(pending_ws, monkeypatch, capsys):
    ws, gate_id = pending_ws
    code, out, _ = _cli(monkeypatch, capsys, "resume", "--workspace", ws.root, "--auto-approve", "--quiet")
    assert code == 0 and f"waits at promotion gate {gate_id}" in out
    assert "--auto-approve never decides a gate whose policy is human" in out
    assert ws.store.gate(gate_id)["status"] == "pending" and ws.store.alias("production") == "v1"


def test_autonomy_is_recorded_at_init_or_set_by_an_approver(tmp_path, tiny_csvs, monkeypatch, capsys):
    workspace = make_workspace(tmp_path / "ws", tiny_csvs, fast_config(autonomous=False))
    code, out, _ = _cli(monkeypatch, capsys, "init", "--workspace", tmp_path / "auto", "--labeled",
                        tiny_csvs["labeled"], "--heldout", tiny_csvs["heldout"], "--policy", "auto")
    assert code == 0 and "every gate is automatic" in out
    text = (tmp_path / "auto" / "config.toml").read_text()
    assert text.count('policy = "auto"') == 4
    auth.add_user(workspace.store, APPROVER, "approver", PASSWORD)
    auth.add_user(workspace.store, "victor", "viewer", "victor-secret")
    args = ["config", "set", "gates.promotion.policy", "auto", "--workspace", workspace.root]
    assert _cli(monkeypatch, capsys, *args)[0] == 1  # no --by
    assert _cli(monkeypatch, capsys, *args, "--by", "victor", password="victor-secret")[2].strip().endswith(
        "'victor' is a viewer, not an approver")
    code, out, _ = _cli(monkeypatch, capsys, *args, "--by", APPROVER)
    assert code == 0 and '"human" -> "auto"' in out
    assert workspace.config().gates.promotion.policy == "auto"
    entry = workspace.store.audit_entries().iloc[-1]
    assert entry["action"] == "config_changed" and entry["actor"] == APPROVER
    assert json.loads(entry["detail"])["gates.promotion.policy"] == {"from": "human", "to": "auto"}
    code, _, err = _cli(monkeypatch, capsys, "config", "set", "gates.min_gain", "lots", "--workspace",
                        workspace.root, "--by", APPROVER)
    assert code == 1 and "gates.min_gain" in err and len(err.strip().splitlines()) == 2  # announce + one line


# -- 3: adding, promoting or removing users needs an approver -------------------------------------------------
def test_users_need_an_approver_once_there_is_one(workspace, tmp_path, monkeypatch, capsys):
    root = workspace.root
    pw = tmp_path / "pw"
    pw.write_text("first-approver-pw\n")
    # the first approver of a workspace needs no credential
    assert _cli(monkeypatch, capsys, "users", "add", "alice", "--role", "approver", "--workspace", root,
                "--password-file", pw, password=None)[0] == 0
    pw.write_text("mallory-password")
    code, _, err = _cli(monkeypatch, capsys, "users", "add", "mallory", "--role", "approver", "--workspace", root,
                        "--password-file", pw, password=None)
    assert code == 1 and "needs an approver" in err and workspace.store.user("mallory") is None
    pw.write_text("victor-password")
    code, _, err = _cli(monkeypatch, capsys, "users", "add", "victor", "--role", "viewer", "--workspace", root,
                        "--password-file", pw, "--by", "alice", password="first-approver-pw")
    assert code == 0 and "using the password in EVOLAB_PASSWORD" in err
    # the new user's password came from the file, never from EVOLAB_PASSWORD (the deciding approver's)
    assert auth.authenticate(workspace.store, "victor", "victor-password", "test").role == "viewer"
    code, _, err = _cli(monkeypatch, capsys, "users", "set-role", "victor", "--role", "approver", "--workspace",
                        root, "--by", "victor", password="victor-password")
    assert code == 1 and "not an approver" in err
    assert _cli(monkeypatch, capsys, "users", "set-role", "victor", "--role", "approver", "--workspace", root,
                "--by", "alice", password="first-approver-pw")[0] == 0
    assert _cli(monkeypatch, capsys, "users", "remove", "alice", "--workspace", root, "--by", "victor",
                password="victor-password")[0] == 0
    code, _, err = _cli(monkeypatch, capsys, "users", "remove", "victor", "--workspace", root, "--by", "victor",
                        password="victor-password")
    assert code == 1 and "last approver" in err
    log = workspace.store.audit_entries()
    assert {"user_added", "user_role_changed", "user_removed"} <= set(log["action"])
    assert log[log["action"] == "user_removed"].iloc[-1]["actor"] == "victor"
    for reserved in ("auto", "engine", "auto-approve"):
        with pytest.raises(ValueError, match="reserved"):
            auth.add_user(workspace.store, reserved, "viewer", "long-enough-pw")


# -- 4: a decision after the deadline is refused ----------------------------------------------------------------
def test_a_decision_after_the_deadline_is_refused(pending_ws, monkeypatch, capsys):
    ws, gate_id = pending_ws
    con = duckdb.connect(str(ws.db))
    con.execute("UPDATE gates SET deadline = now()::TIMESTAMP - INTERVAL 1 MINUTE WHERE id = ?", [gate_id])
    con.close()
    code, _, err = _cli(monkeypatch, capsys, "approve", "--workspace", ws.root, gate_id, "--by", APPROVER)
    assert code == 1 and "expired" in err and "does not count" in err
    gate = ws.store.gate(gate_id)
    assert gate["status"] == "rejected" and gate["decided_by"] == "auto" and "timed out" in gate["comment"]
    assert cycle.resume(ws, progress=False).status == "rejected" and ws.store.alias("production") == "v1"


# -- 5: failed checks are not approved into production without an explicit, recorded override ---------------
@pytest.mark.slow
def test_failed_checks_need_an_override_with_a_reason(baseline_ws, monkeypatch, capsys):
    ws = baseline_ws
    config = ws.config()
    config.gates.promotion.policy = "human"
    config.gates.min_gain = 0.99  # no candidate can pass: its checks fail
    config.gates.data_review.policy = "auto"
    ws.save_config(config)
    auth.add_user(ws.store, APPROVER, "approver", PASSWORD)
    # issue 26.8: a human gate whose checks failed waits for a person (it was rejected at once, so the
    # documented override could never be used)
    outcome = cycle.evolve(ws, cycles=1, progress=False)[-1]
    gate = ws.store.gate_for(outcome.cycle_id, "promotion")
    assert outcome.status == "waiting" and gate["status"] == "pending" and not gate["checks"]["passed"]
    assert "--override" in outcome.message
    root, gid = ws.root, gate["id"]
    code, _, err = _cli(monkeypatch, capsys, "approve", "--workspace", root, gid, "--by", APPROVER)
    assert code == 1 and "checks failed" in err and "--override" in err
    code, _, err = _cli(monkeypatch, capsys, "approve", "--workspace", root, gid, "--by", APPROVER, "--override")
    assert code == 1 and "written reason" in err
    code, out, _ = _cli(monkeypatch, capsys, "approve", "--workspace", root, gid, "--by", APPROVER, "--override",
                        "--comment", "the margin is set too high for this domain")
    assert code == 0 and "OVERRIDE" in out
    decided = ws.store.gate(gid)
    assert decided["status"] == "approved" and decided["override"]
    entry = ws.store.audit_entries().iloc[-1]
    assert entry["action"] == "gate_overridden" and json.loads(entry["detail"])["override"] is True
    code, out, _ = _cli(monkeypatch, capsys, "gates", "--workspace", root)
    assert code == 0 and "OVERRIDE: approved although its checks failed" in out
    assert cycle.resume(ws, progress=False).status == "done" and ws.store.alias("production") == "v2"  # overridden in


# -- 6: rollback only to a version that has been production -----------------------------------------------------
def test_rollback_only_to_an_earlier_production(pending_ws, monkeypatch, capsys):
    ws, gate_id = pending_ws
    root = ws.root
    code, _, err = _cli(monkeypatch, capsys, "rollback", "--workspace", root, "--to", "v2", "--by", APPROVER)
    assert code == 1 and "has never been production" in err and ws.store.alias("production") == "v1"
    approve_as(ws, gate_id)
    assert cycle.resume(ws, progress=False).status == "done" and ws.store.alias("production") == "v2"
    code, out, _ = _cli(monkeypatch, capsys, "rollback", "--workspace", root, "--to", "v1", "--by", APPROVER)
    assert code == 0 and "v2 -> v1" in out and ws.store.alias("production") == "v1"


# -- 7: password guessing: one message, the same work, a lockout, a log that is not flooded -------------------
def test_guessing_gets_one_message_constant_work_and_a_lockout(workspace, monkeypatch):
    store = workspace.store
    auth.add_user(store, APPROVER, "approver", PASSWORD)
    calls = []

    class Counting:  # the real argon2 hasher, counting its checks
        def verify(self, hashed, password):
            calls.append(hashed)
            return real.verify(hashed, password)

    real = auth._hasher
    monkeypatch.setattr(auth, "_hasher", Counting())
    messages = set()
    for name in ("mallory", APPROVER):
        with pytest.raises(auth.AuthError) as err:
            auth.authenticate(store, name, "wrong-guess", "test")
        messages.add(str(err.value))
    assert messages == {auth.REFUSED} and len(calls) == 2  # an unknown name costs one argon2 check too
    before = len(store.audit_entries())
    for _ in range(20):
        with pytest.raises(auth.AuthError):
            auth.authenticate(store, APPROVER, "wrong-guess", "test")
    with pytest.raises(auth.AuthError, match="try again in"):
        auth.authenticate(store, APPROVER, PASSWORD, "test")  # locked, even with the right password
    refused = store.audit_entries().iloc[before:]
    assert len(refused) <= 2 and (refused["action"] == "auth_refused").all()  # 20 guesses, not 20 entries
    state = store.auth_failure(APPROVER)
    assert state["consecutive"] == auth.LOCK_AFTER  # guesses while locked cost no argon2 work and count nothing

    def unlock():
        con = duckdb.connect(str(workspace.db))
        con.execute("UPDATE auth_failures SET locked_until = now()::TIMESTAMP - INTERVAL 1 SECOND")
        con.close()

    unlock()
    with pytest.raises(auth.AuthError):
        auth.authenticate(store, APPROVER, "wrong-again", "test")
    state = store.auth_failure(APPROVER)
    wait = (state["locked_until"] - pd.Timestamp.now(tz="UTC").tz_localize(None)).total_seconds()
    # the delay doubles with each failure past the lockout: the first lock was BASE_DELAY_S
    assert state["consecutive"] == auth.LOCK_AFTER + 1 and wait > 1.5 * auth.BASE_DELAY_S
    unlock()
    assert auth.authenticate(store, APPROVER, PASSWORD, "test").role == "approver"
    assert store.auth_failure(APPROVER) is None  # a success clears the count


# -- 2: feedback is a verified candidate, never training data on its own say-so ---------------------------------
@pytest.mark.slow
def test_feedback_is_verified_like_any_generator(baseline_ws):
    ws = baseline_ws
    store = ws.store
    labels = store.labels()
    assert labels[0] == "account_access" and "shipping_delay" in labels
    good = ["I cannot log into my account, the password reset link never arrives",
            "my login keeps failing and now I am locked out of my profile"]
    # parcels "corrected" to account_access: a careless or hostile sender
    planted = ["my parcel has not arrived and the tracking has not moved in a week",
               "the delivery is late again, where is my package"]
    texts = good + planted
    ids = [f"p{i}" for i in range(len(texts))]
    now = pd.Timestamp.now()
    store.log_production(
        pd.DataFrame({"id": ids, "at": now, "text": texts, "label": labels[2], "confidence": 0.5,
                      "model_version": "v1", "scaffold_version": "analyze_plan_execute", "latency_ms": 1.0}),
        pd.DataFrame({"prediction_id": ids, "label": [labels[0]] * 2 + [labels[0]] * 2, "at": now,
                      "actor": "token:ops-bot"}))
    outcome = cycle.evolve(ws, cycles=1, progress=False)[-1]
    samples = store.samples(outcome.cycle_id)
    fb = samples[samples["generator"] == "feedback"].set_index("text")
    assert set(fb.index) == set(texts)
    # the independent view (the labeled examples' kNN vote) does not confirm the planted corrections
    assert (fb.loc[planted, "status"] == "dropped").all()
    assert fb.loc[planted, "reason"].str.contains("independent view does not confirm").all()
    assert (fb.loc[good, "status"] == "kept").all()
    trained = pd.read_parquet(ws.checkpoints / f"cycle_{outcome.cycle_id}" / "train.parquet")
    assert not set(planted) & set(trained["text"]) and set(good) <= set(trained["text"])
    review = store.gate_for(outcome.cycle_id, "data_review")["checks"]
    assert review["generator_shares"].get("feedback", 0) > 0  # counted in the data review



# -- issue 26.5: a hand edit of a key that governs oversight, execution or secrets waits for an approver -------
def _hand_edit(ws, **sections):
    """config.toml rewritten directly, as anyone who can write the workspace folder can."""
    from core import atomic
    from core.config import dump_config

    config = ws.config()
    for dotted, value in sections.items():
        *path, leaf = dotted.split("__")
        node = config
        for part in path:
            node = getattr(node, part)
        setattr(node, leaf, value)
    atomic.write_text(ws.config_path, dump_config(config))


@pytest.mark.parametrize("edit", [
    {"gates__promotion__policy": "auto"},
    {"curate__sandbox_callable": "os:system"},
    {"scaffolds__llm__api_key_env": "AWS_SECRET_ACCESS_KEY", "scaffolds__llm__base_url": "http://evil.example/v1"}])
def test_a_governed_hand_edit_stops_the_engine_until_an_approver_accepts_it(tmp_path, tiny_csvs, monkeypatch,
                                                                            capsys, edit):
    ws = make_workspace(tmp_path / "ws", tiny_csvs, fast_config(autonomous=False))
    auth.add_user(ws.store, APPROVER, "approver", PASSWORD)
    auth.add_user(ws.store, "victor", "viewer", "victor-secret")
    _hand_edit(ws, train__epochs=3, **edit)  # epochs governs nothing: recorded, never held
    keys = sorted(k.replace("__", ".") for k in edit)

    code, out, err = _cli(monkeypatch, capsys, "resume", "--workspace", ws.root, "--quiet", password=None)
    assert code == 1 and err.count("\n") == 1 and "edited by hand" in err and all(k in err for k in keys), err
    entries = ws.store.audit_entries()
    changed = json.loads(entries[entries["action"] == "config_changed"].iloc[-1]["detail"])
    assert changed == {"train.epochs": {"from": 2, "to": 3}}
    held = entries[entries["action"] == "config_change_held"]
    assert len(held) == 1 and sorted(json.loads(held.iloc[0]["detail"])) == keys
    with pytest.raises(Exception, match="edited by hand"):
        cycle.evolve(ws, cycles=1, progress=False)
    assert len(ws.store.audit_entries()[lambda f: f["action"] == "config_change_held"]) == 1  # not once a start
    assert ws.store.cycles().empty  # nothing ran

    # an approver setting another key does not launder the edit; a viewer cannot accept it
    assert _cli(monkeypatch, capsys, "config", "set", "train.epochs", "4", "--workspace", ws.root, "--by",
                APPROVER)[0] == 0
    assert _cli(monkeypatch, capsys, "resume", "--workspace", ws.root, "--quiet")[0] == 1
    code, _, err = _cli(monkeypatch, capsys, "config", "accept", "--workspace", ws.root, "--by", "victor",
                        password="victor-secret")
    assert code == 1 and "not an approver" in err
    code, out, _ = _cli(monkeypatch, capsys, "config", "accept", "--workspace", ws.root, "--by", APPROVER)
    assert code == 0 and all(k in out for k in keys)
    entry = ws.store.audit_entries().iloc[-1]
    assert entry["action"] == "config_accepted" and entry["actor"] == APPROVER
    assert sorted(json.loads(entry["detail"])) == keys
    code, out, _ = _cli(monkeypatch, capsys, "resume", "--workspace", ws.root, "--quiet")
    assert code == 0 and "nothing to resume" in out


# -- issue 26.6: guardrails add, samples export and scaffolds add go through core/actions.py ------------------
def test_guardrails_exports_and_scaffolds_need_an_approver_and_are_audited(workspace, tmp_path, monkeypatch,
                                                                         capsys):
    ws = workspace
    auth.add_user(ws.store, APPROVER, "approver", PASSWORD)
    auth.add_user(ws.store, "victor", "viewer", "victor-secret")
    probes = tmp_path / "g.csv"
    probes.write_text("text,expected_label\nmy card was charged twice,billing_question\n")
    scaffold = tmp_path / "s.json"
    scaffold.write_text('{"name": "mine", "steps": [{"type": "classify"}, {"type": "retrieve", "k": 5}]}')
    out = tmp_path / "kept.jsonl"
    commands = {"guardrails_added": ["guardrails", "add", "--file", probes],
                "samples_exported": ["samples", "export", "--out", out],
                "scaffold_added": ["scaffolds", "add", "--file", scaffold]}
    for action, args in commands.items():
        base = [*args, "--workspace", ws.root]
        code, _, err = _cli(monkeypatch, capsys, *base, password=None)
        assert code == 1 and "--by" in err, (action, err)  # no credential, no write
        code, _, err = _cli(monkeypatch, capsys, *base, "--by", "victor", password="victor-secret")
        assert code == 1 and "'victor' is a viewer, not an approver" in err, (action, err)
        assert action not in ws.store.audit_entries()["action"].tolist()
        assert ws.store.guardrails().empty and not out.exists() and "mine" not in set(ws.store.scaffolds()["name"])
    for action, args in commands.items():
        code, _, err = _cli(monkeypatch, capsys, *args, "--workspace", ws.root, "--by", APPROVER)
        assert code == 0, (action, err)
        entry = ws.store.audit_entries().iloc[-1]
        assert (entry["action"], entry["actor"]) == (action, APPROVER)
    assert len(ws.store.guardrails()) == 1 and out.exists() and "mine" in set(ws.store.scaffolds()["name"])
    assert json.loads(ws.store.audit_entries().query("action == 'samples_exported'").iloc[0]["detail"])["to"] == \
        str(out.resolve())


# -- issue 26.7: names someone typed cannot forge a line of the log, nor bury it --------------------------------
def test_typed_names_cannot_forge_or_flood_the_audit_log(workspace, monkeypatch, capsys):
    ws = workspace
    auth.add_user(ws.store, APPROVER, "approver", PASSWORD)
    monkeypatch.setattr(auth, "GLOBAL_AUDITED", 4, raising=False)
    forged = "bob\n   99  2030-01-01 00:00:00  alice          promoted             version:v9"
    for name in (forged, "engine"):
        code, _, err = _cli(monkeypatch, capsys, "approve", "1", "--workspace", ws.root, "--by", name,
                            password="a-guess")
        assert code == 1 and auth.REFUSED in err
    for i in range(8):  # distinct unknown names: each would be the first failure of its own window
        with pytest.raises(auth.AuthError):
            auth.authenticate(ws.store, f"guess{i}", "a-guess", "test")
    entries = ws.store.audit_entries()
    refused = entries[entries["action"] == "auth_refused"]
    assert refused["actor"].iloc[0].startswith("name-sha256:") and refused["actor"].iloc[1].startswith("name-sha256:")
    assert "engine" not in set(refused["actor"])  # a typed engine name is not the engine
    assert len(refused) == 4 and (entries["action"] == "auth_flood").sum() == 1  # bounded across names

    ws.store.audit("token:x (bob\n   98  2030-01-01 00:00:00  alice)", "feedback_received", "feedback")
    code, out, _ = _cli(monkeypatch, capsys, "audit", "list", "--workspace", ws.root)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == len(ws.store.audit_entries())  # one line per entry, whatever a field holds
    assert not any(line.lstrip().startswith(("99 ", "98 ")) for line in lines) and "\\n   98" in out
