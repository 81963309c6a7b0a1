"""The audit log: a hash chain keyed with a secret outside the workspace, its sealed head, and the
configuration history it records."""
from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

import pandas as pd

from core import auditkey
from core.store.base import _json, utcnow

GENESIS_HASH = "0" * 64


def _entry_payload(prev_hash: str, at: datetime, actor: str, action: str, subject: str, detail: str) -> str:
    return json.dumps([prev_hash, at.isoformat(), actor, action, subject, detail], separators=(",", ":"))


def entry_hash(prev_hash: str, at: datetime, actor: str, action: str, subject: str, detail: str) -> str:
    """Plain SHA-256: entries written before the workspace had an audit key."""
    return hashlib.sha256(_entry_payload(prev_hash, at, actor, action, subject, detail).encode("utf-8")).hexdigest()


def entry_mac(key: bytes, prev_hash: str, at: datetime, actor: str, action: str, subject: str, detail: str) -> str:
    """HMAC-SHA256 of the same payload: only the key's holder can write an entry that verifies."""
    return auditkey.mac(key, _entry_payload(prev_hash, at, actor, action, subject, detail))


class AuditMixin:
    # -- audit (written inside the transaction of the action it records) ----------------------
    @staticmethod
    def _audit(con, actor: str, action: str, subject: str, detail: dict | None = None) -> None:
        keying = AuditMixin._audit_keying(con)
        if keying is None:  # a log begun before audit keys: keyed from here on, and the log says so
            keying = AuditMixin._start_keying(con)
            AuditMixin._append_entry(con, keying, "engine", "audit_keyed", "audit_log",
                                     {"plain_entries": keying[1] - 1, "key_file": str(auditkey.key_path(keying[0]))})
        AuditMixin._append_entry(con, keying, actor, action, subject, detail)

    @staticmethod
    def _audit_keying(con) -> tuple[str, int] | None:
        """(workspace id, first keyed seq), or None for a log from before keys. Refuses (no entry written) a log
        whose key identity was tampered with: keying it afresh would launder whatever happened to it."""
        meta = dict(con.execute("SELECT key, value FROM meta WHERE key IN ('workspace_id', 'audit_keyed_from', "
                                "'audit_key_check')").fetchall())
        workspace_id, marker = meta.get("workspace_id"), auditkey.read_marker(AuditMixin._database(con))
        if "audit_keyed_from" in meta and workspace_id is None:
            raise auditkey.AuditKeyError("the audit log is keyed but the database lost its workspace id, so its "
                                         "key cannot be found; no entry is written")
        if workspace_id is None:
            if marker is not None:
                raise auditkey.AuditKeyError(f"this workspace was keyed as {marker} but its database no longer says "
                                             "so (the audit log was downgraded); no entry is written")
            return None
        if not auditkey.well_formed(workspace_id):
            raise auditkey.AuditKeyError(f"the audit log's workspace id {workspace_id!r} is not an Evolab workspace "
                                         "id (it would redirect the key lookup); no entry is written")
        if marker is not None and marker != workspace_id:
            raise auditkey.AuditKeyError(f"this workspace was keyed as {marker} but its database names {workspace_id} "
                                         "(the audit log was re-keyed); no entry is written")
        if marker is None:
            # A copy at a new place, or a log keyed before markers: its marker is written once the database's
            # key check proves the id names this log's key (a copied id with another key would not match).
            key = auditkey.cached_key(workspace_id)
            if meta.get("audit_key_check") != auditkey.key_check(key, workspace_id):
                raise auditkey.AuditKeyError(f"the key at {auditkey.key_path(workspace_id)} does not match this "
                                             "audit log's key check; no entry is written")
            auditkey.write_marker(AuditMixin._database(con), workspace_id)
        return workspace_id, int(meta.get("audit_keyed_from", 1))

    @staticmethod
    def _database(con) -> Path:
        return Path(con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()")
                    .fetchone()[0])

    @staticmethod
    def _start_keying(con) -> tuple[str, int]:
        row = con.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        last, last_hash = row if row else (0, GENESIS_HASH)
        workspace_id = auditkey.new_workspace_id()
        auditkey.create_key(workspace_id)
        key = auditkey.cached_key(workspace_id)
        con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
            ["workspace_id", workspace_id], ["audit_keyed_from", str(last + 1)],
            ["audit_key_check", auditkey.key_check(key, workspace_id)]])
        # A keyed log always has a sealed head, even before its first entry, so emptying it shows.
        AuditMixin._set_head(con, key, last, last_hash, last + 1)
        auditkey.write_marker(AuditMixin._database(con), workspace_id)
        return workspace_id, last + 1

    @staticmethod
    def _append_entry(con, keying: tuple[str, int], actor: str, action: str, subject: str,
                      detail: dict | None) -> None:
        workspace_id, keyed_from = keying
        key = auditkey.cached_key(workspace_id)  # raises before anything is written without the key
        row = con.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS_HASH)
        at = utcnow()
        detail_s = _json(detail or {})
        digest = entry_mac(key, prev, at, actor, action, subject, detail_s)
        con.execute("INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [seq, at, actor, action, subject, detail_s, prev, digest])
        AuditMixin._set_head(con, key, seq, digest, keyed_from)

    @staticmethod
    def _set_head(con, key: bytes, seq: int, digest: str, keyed_from: int) -> None:
        # The head lets verification notice deleted last entries, which the chain alone cannot show; its MAC
        # stops whoever truncates the log from writing a head to match.
        head = f"{seq}:{digest}"
        con.execute("INSERT OR REPLACE INTO meta VALUES ('audit_head', ?)",
                    [f"{head}:{auditkey.head_mac(key, head, keyed_from)}"])

    def start_audit_key(self) -> str:
        """Give a new workspace its id and audit key before its first entry, so its whole log is keyed; its id."""
        with self._tx() as con:
            return (AuditMixin._audit_keying(con) or AuditMixin._start_keying(con))[0]

    def audit(self, actor: str, action: str, subject: str, detail: dict | None = None) -> None:
        with self._tx() as con:
            self._audit(con, actor, action, subject, detail)

    def audit_entries(self) -> pd.DataFrame:
        return self._read("SELECT * FROM audit_log ORDER BY seq")

    def audit_head(self) -> str | None:
        df = self._read("SELECT value FROM meta WHERE key = 'audit_head'")
        return None if df.empty else df.iloc[0, 0]

    def audit_snapshot(self) -> tuple[pd.DataFrame, dict[str, str]]:
        """Entries and the audit meta rows read in one transaction, so a write in between cannot look like
        tampering."""
        if not self.path.exists():
            raise FileNotFoundError(f"no workspace database at {self.path}")
        with self._tx(read_only=True) as con:
            entries = con.execute("SELECT * FROM audit_log ORDER BY seq").df()
            meta = dict(con.execute("SELECT key, value FROM meta WHERE key IN ('workspace_id', 'audit_keyed_from', "
                                    "'audit_key_check', 'audit_head')").fetchall())
        return entries, meta

    # -- configuration history ------------------------------------------------------------------
    def config_snapshot(self) -> dict | None:
        df = self._read("SELECT value FROM meta WHERE key = 'config_snapshot'")
        return None if df.empty else json.loads(df.iloc[0, 0])

    def config_held(self) -> dict:
        """The hand edits of governed keys last recorded as held (workspace.audit_config)."""
        df = self._read("SELECT value FROM meta WHERE key = 'config_held'")
        return {} if df.empty else json.loads(df.iloc[0, 0])

    def record_config(self, snapshot: dict, changes: dict, actor: str, action: str = "config_changed",
                      held: dict | None = None) -> None:
        """The accepted config (snapshot) and what changed, audited as `action`; `held`: governed keys edited
        by hand and not accepted, audited as `config_change_held` (kept in meta, so audited once)."""
        with self._tx() as con:
            con.execute("INSERT OR REPLACE INTO meta VALUES ('config_snapshot', ?)", [_json(snapshot)])
            if changes:
                self._audit(con, actor, action, "config.toml", changes)
            if held:
                con.execute("INSERT OR REPLACE INTO meta VALUES ('config_held', ?)", [_json(held)])
                self._audit(con, actor, "config_change_held", "config.toml", held)
            else:
                con.execute("DELETE FROM meta WHERE key = 'config_held'")
