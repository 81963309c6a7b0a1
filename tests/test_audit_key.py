"""The keyed audit chain: a key outside the workspace, and verification that names what happened to the log.

Every tampering here is done the way an attacker with write access to the workspace would: DuckDB directly."""
import os
import secrets
import stat

import duckdb
import pytest

from core import audit, auditkey
from core.cli import main
from core.store import GENESIS_HASH, entry_hash, entry_mac
from tests.conftest import make_workspace


@pytest.fixture
def ws(workspace):
    """A new workspace (2 entries from init) plus 5 more entries."""
    for i in range(5):
        workspace.store.audit("alice", "note", f"thing:{i}", {"i": i})
    return workspace


def _sql(ws, sql, params=None):
    con = duckdb.connect(str(ws.db))
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def _key_file(ws):
    return auditkey.key_path(_meta(ws)["workspace_id"])


def _meta(ws):
    return ws.store.audit_snapshot()[1]


def _cli_verify(capsys, *where):
    code = main(["audit", "verify", *where])
    out = capsys.readouterr()
    return code, out.out + out.err


def _rewrite_plain(ws, actors=None):
    """Recompute the whole chain with plain SHA-256 (changing some actors on the way), and its head: all an
    attacker needed to forge the log before it was keyed."""
    con = duckdb.connect(str(ws.db))
    rows = con.execute("SELECT seq, \"at\", actor, action, subject, detail FROM audit_log ORDER BY seq").fetchall()
    prev = GENESIS_HASH
    for seq, at, actor, action, subject, detail in rows:
        actor = (actors or {}).get(seq, actor)
        digest = entry_hash(prev, at, actor, action, subject, detail)
        con.execute("UPDATE audit_log SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?", [actor, prev, digest, seq])
        prev = digest
    con.execute("INSERT OR REPLACE INTO meta VALUES ('audit_head', ?)", [f"{rows[-1][0]}:{prev}"])
    con.close()


def _old_verify(entries, head) -> bool:
    """core/audit.py's verify_entries before keys (commit 524bd9f), kept to show what it let through."""
    prev, expected = GENESIS_HASH, 1
    for row in entries.itertuples():
        if row.seq != expected or row.prev_hash != prev:
            return False
        if entry_hash(prev, row.at.to_pydatetime(), row.actor, row.action, row.subject, row.detail) != row.hash:
            return False
        prev, expected = row.hash, expected + 1
    if head is not None:
        head_seq, head_hash = head.split(":", 1)
        if int(head_seq) != expected - 1 or head_hash != prev:
            return False
    return True


def test_init_writes_a_private_key_outside_the_workspace(ws, capsys):
    meta, path = _meta(ws), _key_file(ws)
    assert meta["audit_keyed_from"] == "1" and len(meta["audit_head"].split(":")) == 3
    assert path.is_file() and path.name == f"{meta['workspace_id']}.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert ws.root.resolve() not in path.resolve().parents
    assert path.is_relative_to(os.environ["XDG_CONFIG_HOME"])  # the tests' temp folder, never the real home
    assert len(bytes.fromhex(path.read_text().strip())) == 32
    entries = ws.store.audit_entries()
    key = auditkey.read_key(path)
    for row in entries.itertuples():  # every entry from the first is keyed
        assert row.hash == entry_mac(key, row.prev_hash, row.at.to_pydatetime(), row.actor, row.action,
                                     row.subject, row.detail)
    code, out = _cli_verify(capsys, "--workspace", str(ws.root))
    assert code == 0 and f"{len(entries)} entries" in out and str(path) in out


def test_key_file_from_the_environment_is_shared_not_replaced(tmp_path, tiny_csvs, monkeypatch, capsys):
    path = tmp_path / "keys" / "evolab.key"
    monkeypatch.setenv(auditkey.ENV, str(path))
    first = make_workspace(tmp_path / "a", tiny_csvs)
    key = path.read_text()
    second = make_workspace(tmp_path / "b", tiny_csvs)
    assert path.read_text() == key and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert _meta(first)["workspace_id"] != _meta(second)["workspace_id"]
    for w in (first, second):
        assert _cli_verify(capsys, "--workspace", str(w.root))[0] == 0


def test_altered_entry(ws, capsys):
    _sql(ws, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 4")
    report = audit.verify(ws.store)
    assert (report.case, report.first_bad_seq) == ("altered", 4)
    code, out = _cli_verify(capsys, "--workspace", str(ws.root))
    assert code == 1 and "ALTERED at entry 4" in out


def test_deleted_middle_entry(ws, capsys):
    _sql(ws, "DELETE FROM audit_log WHERE seq = 3")
    report = audit.verify(ws.store)
    assert (report.case, report.first_bad_seq) == ("deleted", 3) and "entry 3 was deleted" in report.problem
    code, out = _cli_verify(capsys, "--workspace", str(ws.root))
    assert code == 1 and "DELETED at entry 3" in out


def test_deleted_entry_with_the_rest_renumbered(ws):
    _sql(ws, "DELETE FROM audit_log WHERE seq = 3")
    for seq in range(4, 8):
        _sql(ws, "UPDATE audit_log SET seq = ? WHERE seq = ?", [seq - 1, seq])
    _sql(ws, "DELETE FROM meta WHERE key = 'audit_head'")  # the old head would name entry 7
    report = audit.verify(ws.store)
    assert (report.case, report.first_bad_seq) == ("deleted", 3)


def test_two_entries_swapped(ws, capsys):
    rows = _sql(ws, "SELECT * FROM audit_log WHERE seq IN (3, 4) ORDER BY seq")
    _sql(ws, "DELETE FROM audit_log WHERE seq IN (3, 4)")
    for row, seq in zip(rows, (4, 3)):
        _sql(ws, "INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [seq, *row[1:]])
    report = audit.verify(ws.store)
    assert (report.case, report.first_bad_seq) == ("reordered", 3)
    code, out = _cli_verify(capsys, "--workspace", str(ws.root))
    assert code == 1 and "REORDERED at entry 3" in out


@pytest.mark.parametrize("head", ["kept", "deleted", "forged", "unkeyed"])
def test_last_entries_deleted(ws, capsys, head):
    n = len(ws.store.audit_entries())
    _sql(ws, "DELETE FROM audit_log WHERE seq > ?", [n - 2])
    last_hash = _sql(ws, "SELECT hash FROM audit_log WHERE seq = ?", [n - 2])[0][0]
    forged = {"deleted": None, "unkeyed": f"{n - 2}:{last_hash}",
              "forged": f"{n - 2}:{last_hash}:{auditkey.head_mac(secrets.token_bytes(32), f'{n - 2}:{last_hash}', 1)}"}
    if head in forged:
        _sql(ws, "DELETE FROM meta WHERE key = 'audit_head'")
        if forged[head]:
            _sql(ws, "INSERT INTO meta VALUES ('audit_head', ?)", [forged[head]])
    report = audit.verify(ws.store)
    assert (report.case, report.first_bad_seq) == ("truncated", n - 1), report
    code, out = _cli_verify(capsys, "--workspace", str(ws.root))
    assert code == 1 and f"TRUNCATED at entry {n - 1}" in out


def test_head_missing_is_broken_even_with_every_entry_there(ws):
    _sql(ws, "DELETE FROM meta WHERE key = 'audit_head'")
    assert audit.verify(ws.store).case == "truncated"


def test_emptied_log_is_caught(ws):
    _sql(ws, "DELETE FROM audit_log")
    _sql(ws, "DELETE FROM meta WHERE key = 'audit_head'")
    assert audit.verify(ws.store).case == "truncated"


def test_missing_or_wrong_key_is_unverifiable(ws, capsys):
    path = _key_file(ws)
    path.unlink()
    code, out = _cli_verify(capsys, "--workspace", str(ws.root))
    assert code == 1 and "UNVERIFIABLE" in out and str(path) in out
    assert audit.verify(ws.store).case == "unverifiable"
    path.write_text(secrets.token_hex(32) + "\n")
    report = audit.verify(ws.store)
    assert report.case == "unverifiable" and "does not match" in report.problem and str(path) in report.problem


def test_no_entry_is_written_without_the_key(ws, capsys, monkeypatch, tmp_path):
    path = _key_file(ws)
    path.unlink()
    monkeypatch.setattr(auditkey, "_cache", {})  # a fresh process: nothing read yet
    (tmp_path / "pw").write_text("bob-secret-1")
    before = len(ws.store.audit_entries())
    assert main(["users", "add", "bob", "--role", "approver", "--workspace", str(ws.root),
                 "--password-file", str(tmp_path / "pw")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no audit key at" in err and str(path) in err
    assert len(ws.store.audit_entries()) == before and ws.store.user("bob") is None  # the action rolled back too
    with pytest.raises(auditkey.AuditKeyError):
        ws.store.audit("alice", "note", "x")


def test_chain_rewritten_with_plain_hashes_fools_the_old_verify_not_the_new(ws, capsys):
    _rewrite_plain(ws, actors={3: "mallory"})
    entries = ws.store.audit_entries()
    assert entries.loc[entries.seq == 3, "actor"].item() == "mallory"
    assert _old_verify(entries, ws.store.audit_head())  # the forgery passes the unkeyed check
    report = audit.verify(ws.store)
    assert (report.case, report.first_bad_seq) == ("altered", 1)
    code, out = _cli_verify(capsys, "--workspace", str(ws.root))
    assert code == 1 and "ALTERED at entry 1" in out


def _as_older_evolab_wrote_it(ws):
    """The workspace as an Evolab from before keys left it: no key identity in the database, no marker beside
    the keys, a plain SHA-256 chain."""
    _sql(ws, "DELETE FROM meta WHERE key IN ('workspace_id', 'audit_keyed_from', 'audit_key_check')")
    auditkey.forget_marker(ws.db)
    _rewrite_plain(ws)


def test_a_log_from_before_keys_is_keyed_from_its_next_entry(ws, capsys):
    old_id = _meta(ws)["workspace_id"]
    _as_older_evolab_wrote_it(ws)
    n = len(ws.store.audit_entries())
    report = audit.verify(ws.store)
    assert (report.ok, report.case) == (False, "unkeyed")  # accepted only when asked
    code, out = _cli_verify(capsys, "--workspace", str(ws.root))
    assert code == 1 and "UNKEYED" in out and "--accept-legacy" in out
    assert audit.verify(ws.store, accept_legacy=True).ok
    code, out = _cli_verify(capsys, "--workspace", str(ws.root), "--accept-legacy")
    assert code == 0 and "UNKEYED" in out

    ws.store.audit("alice", "note", "after the upgrade")
    meta = _meta(ws)
    assert meta["workspace_id"] != old_id and meta["audit_keyed_from"] == str(n + 1)
    assert auditkey.read_marker(ws.db) == meta["workspace_id"]  # from now on it can never verify unkeyed
    path = _key_file(ws)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entries = ws.store.audit_entries()
    assert entries["action"].tolist()[n:] == ["audit_keyed", "note"]  # the log says when keying began
    report = audit.verify(ws.store)
    assert report.ok and report.keyed_from == n + 1 and report.entries == n + 2
    code, out = _cli_verify(capsys, "--workspace", str(ws.root))
    assert code == 0 and f"entries before {n + 1} plain SHA-256" in out

    _sql(ws, "UPDATE meta SET value = '1' WHERE key = 'audit_keyed_from'")  # moving the boundary shows
    assert audit.verify(ws.store).case == "altered"
    _sql(ws, "UPDATE meta SET value = ? WHERE key = 'audit_keyed_from'", [str(n + 1)])
    assert audit.verify(ws.store).ok
    _sql(ws, "UPDATE audit_log SET detail = '{}' WHERE seq = 1")  # the plain part is still checked
    assert (audit.verify(ws.store).case, audit.verify(ws.store).first_bad_seq) == ("altered", 1)


def _rewrite_keyed(ws, workspace_id, key, actors=None):
    """Re-key the whole log under `key` as `workspace_id`: the chain, the key check and a sealed head, all
    consistent; what the attacker of a re-keyed or redirected log writes."""
    con = duckdb.connect(str(ws.db))
    rows = con.execute("SELECT seq, \"at\", actor, action, subject, detail FROM audit_log ORDER BY seq").fetchall()
    prev = GENESIS_HASH
    for seq, at, actor, action, subject, detail in rows:
        actor = (actors or {}).get(seq, actor)
        digest = entry_mac(key, prev, at, actor, action, subject, detail)
        con.execute("UPDATE audit_log SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?", [actor, prev, digest, seq])
        prev = digest
    head = f"{rows[-1][0]}:{prev}"
    con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
        ["workspace_id", workspace_id], ["audit_keyed_from", "1"],
        ["audit_key_check", auditkey.key_check(key, workspace_id)],
        ["audit_head", f"{head}:{auditkey.head_mac(key, head, 1)}"]])
    con.close()


@pytest.mark.parametrize("attack", ["downgraded", "rekeyed", "redirected"])
def test_a_keyed_log_never_verifies_once_its_key_identity_is_tampered_with(ws, capsys, monkeypatch, attack):
    """Issue 26.1: each forgery below is consistent from end to end (the old verify said intact, exit 0, and the
    next entry re-keyed a downgraded log in silence); now verify names it and no entry is written over it."""
    before = len(ws.store.audit_entries())
    if attack == "downgraded":  # the key's rows deleted, entry 3 rewritten, a plain chain recomputed
        _sql(ws, "DELETE FROM meta WHERE key IN ('workspace_id', 'audit_keyed_from', 'audit_key_check')")
        _rewrite_plain(ws, actors={3: "mallory"})
    elif attack == "rekeyed":  # a fresh id with a key of the attacker's making (as the silent re-key made one)
        new_id = auditkey.new_workspace_id()
        auditkey.create_key(new_id)
        _rewrite_keyed(ws, new_id, auditkey.read_key(auditkey.key_path(new_id)), actors={3: "mallory"})
    else:  # the id is a path: the key is read from a file the attacker wrote inside the workspace
        key = secrets.token_bytes(32)
        (ws.root / "forged.key").write_text(key.hex() + "\n")
        _rewrite_keyed(ws, str(ws.root / "forged"), key, actors={3: "mallory"})

    report = audit.verify(ws.store)
    assert (report.ok, report.case) == (False, attack), report
    for flags in ([], ["--accept-legacy"]):  # accepting legacy logs never accepts a log that was keyed
        code, out = _cli_verify(capsys, "--workspace", str(ws.root), *flags)
        assert code == 1 and f"audit log {attack.upper()}" in out, out
    monkeypatch.setattr(auditkey, "_cache", {})  # a fresh process: nothing read yet
    with pytest.raises(auditkey.AuditKeyError):
        ws.store.audit("alice", "note", "after the forgery")
    assert len(ws.store.audit_entries()) == before and audit.verify(ws.store).case == attack


def test_an_export_with_its_key_identity_removed_fails(ws, tmp_path, capsys):
    """Issue 26.1: an exported copy edited to `keyed_from: null` (and its chain recomputed plain) passed
    `verify --file`; a copy naming a workspace id, or recording its keying, never verifies unkeyed, and a copy
    with no trace of a key fails unless legacy logs are accepted by name."""
    import json
    from datetime import datetime

    out = tmp_path / "audit.jsonl"
    assert main(["audit", "export", "--workspace", str(ws.root), "--out", str(out)]) == 0
    lines = [json.loads(t) for t in out.read_text().splitlines()]

    def stripped(name, **ident):
        prev, body = GENESIS_HASH, []
        for line in lines[1:-1]:
            line = {**line, "actor": "mallory" if line["seq"] == 3 else line["actor"], "prev_hash": prev}
            line["hash"] = prev = entry_hash(prev, datetime.fromisoformat(line["at"]), line["actor"], line["action"],
                                             line["subject"], line["detail"])
            body.append(line)
        path = tmp_path / name
        rows = [{**lines[0], "keyed_from": None, **ident}, *body, {"record": "head", "head": f"{len(body)}:{prev}"}]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    capsys.readouterr()
    with_id = stripped("with-id.jsonl")
    for flags in ([], ["--accept-legacy"]):
        code, text = _cli_verify(capsys, "--file", str(with_id), *flags)
        assert code == 1 and "audit log DOWNGRADED" in text, text
    bare = stripped("bare.jsonl", workspace_id=None, key_check=None)
    code, text = _cli_verify(capsys, "--file", str(bare))
    assert code == 1 and "audit log UNKEYED" in text and "--accept-legacy" in text


def test_export_and_verify_the_copy_elsewhere(ws, tmp_path, capsys, monkeypatch):
    out = tmp_path / "copy" / "audit.jsonl"
    assert main(["audit", "export", "--workspace", str(ws.root), "--out", str(out)]) == 0
    capsys.readouterr()
    lines = out.read_text().splitlines()
    assert len(lines) == len(ws.store.audit_entries()) + 2 and '"record": "head"' in lines[-1]
    assert _cli_verify(capsys, "--file", str(out))[0] == 0

    # Elsewhere: the key comes from a backup copy named by EVOLAB_AUDIT_KEY_FILE, the workspace is gone.
    backup = tmp_path / "backup.key"
    backup.write_bytes(_key_file(ws).read_bytes())
    monkeypatch.setenv(auditkey.ENV, str(backup))
    code, out_text = _cli_verify(capsys, "--file", str(out))
    assert code == 0 and str(backup) in out_text

    altered = tmp_path / "altered.jsonl"
    altered.write_text("\n".join([*lines[:3], lines[3].replace('"alice"', '"mallory"'), *lines[4:]]) + "\n")
    assert "alice" in lines[3] and audit.verify_file(altered).case == "altered"
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(lines[:-3]) + "\n")  # the last two entries and the head
    code, out_text = _cli_verify(capsys, "--file", str(cut))
    assert code == 1 and "TRUNCATED" in out_text

    monkeypatch.setenv(auditkey.ENV, str(tmp_path / "nowhere.key"))
    code, out_text = _cli_verify(capsys, "--file", str(out))
    assert code == 1 and "UNVERIFIABLE" in out_text and str(tmp_path / "nowhere.key") in out_text


def test_verify_needs_exactly_one_source(ws, capsys):
    assert main(["audit", "verify"]) == 1
    assert main(["audit", "verify", "--workspace", str(ws.root), "--file", "x.jsonl"]) == 1
    assert main(["audit", "export", "--workspace", str(ws.root)]) == 1
    assert "needs --out" in capsys.readouterr().err
