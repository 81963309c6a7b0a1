"""The only module that writes SQL: a DuckDB file owned by named read and write functions.

DuckDB lets one process hold a file at a time (a second process cannot even read while a writer is
connected), so no connection outlives a call: each call opens, runs one transaction, and closes.
Lock conflicts from other processes are retried with backoff, so the engine, the dashboard, the CLI
and the server can share one workspace.
"""
from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import duckdb
import pandas as pd

from core import auditkey
from core.faults import crash_point

# Each entry upgrades the schema by one version; never edit a released entry, append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta(key VARCHAR PRIMARY KEY, value VARCHAR);
    CREATE TABLE labels(idx INTEGER PRIMARY KEY, name VARCHAR NOT NULL UNIQUE);
    CREATE TABLE datasets(id INTEGER PRIMARY KEY, split VARCHAR NOT NULL, source VARCHAR,
        n_rows INTEGER, sha256 VARCHAR, created_at TIMESTAMP);
    CREATE TABLE examples(id BIGINT PRIMARY KEY, dataset_id INTEGER, split VARCHAR NOT NULL,
        text VARCHAR NOT NULL, label VARCHAR, row_num INTEGER);
    CREATE TABLE cycles(id INTEGER PRIMARY KEY, kind VARCHAR NOT NULL, status VARCHAR NOT NULL,
        stage VARCHAR NOT NULL, parent_version VARCHAR, candidate_version VARCHAR, error VARCHAR,
        created_at TIMESTAMP, updated_at TIMESTAMP, finished_at TIMESTAMP);
    CREATE TABLE stage_runs(cycle_id INTEGER, stage VARCHAR, started_at TIMESTAMP,
        seconds DOUBLE, peak_rss_mb DOUBLE, detail JSON, PRIMARY KEY(cycle_id, stage));
    CREATE TABLE train_metrics(run_id VARCHAR, step INTEGER, name VARCHAR, value DOUBLE,
        epoch DOUBLE, "at" TIMESTAMP, PRIMARY KEY(run_id, step, name));
    CREATE TABLE train_events(run_id VARCHAR, step INTEGER, kind VARCHAR, detail VARCHAR,
        "at" TIMESTAMP, PRIMARY KEY(run_id, step, kind));
    CREATE TABLE model_versions(version VARCHAR PRIMARY KEY, num INTEGER NOT NULL UNIQUE,
        created_at TIMESTAMP, cycle_id INTEGER, parent_version VARCHAR, base_model VARCHAR,
        path VARCHAR, files JSON, lineage JSON);
    CREATE TABLE evaluations(version VARCHAR, split VARCHAR, accuracy DOUBLE, n INTEGER,
        per_class JSON, "at" TIMESTAMP, PRIMARY KEY(version, split));
    CREATE TABLE eval_results(version VARCHAR, example_id BIGINT, predicted VARCHAR,
        confidence DOUBLE, correct BOOLEAN, PRIMARY KEY(version, example_id));
    CREATE TABLE aliases(name VARCHAR PRIMARY KEY, version VARCHAR, updated_at TIMESTAMP);
    CREATE TABLE alias_history(id INTEGER PRIMARY KEY, name VARCHAR, version VARCHAR,
        previous VARCHAR, actor VARCHAR, reason VARCHAR, "at" TIMESTAMP);
    CREATE TABLE synthetic_samples(id BIGINT PRIMARY KEY, cycle_id INTEGER, generator VARCHAR,
        parent_id BIGINT, text VARCHAR, label VARCHAR, confidence DOUBLE, difficulty INTEGER,
        scores JSON, status VARCHAR, reason VARCHAR, created_at TIMESTAMP);
    CREATE INDEX samples_cycle ON synthetic_samples(cycle_id);
    CREATE TABLE diagnoses(cycle_id INTEGER, rank INTEGER, kind VARCHAR, subject VARCHAR,
        severity DOUBLE, detail JSON, action VARCHAR, PRIMARY KEY(cycle_id, rank));
    CREATE TABLE gates(id INTEGER PRIMARY KEY, cycle_id INTEGER, kind VARCHAR, status VARCHAR,
        policy VARCHAR, checks JSON, created_at TIMESTAMP, deadline TIMESTAMP,
        decided_at TIMESTAMP, decided_by VARCHAR, comment VARCHAR, automatic BOOLEAN,
        UNIQUE(cycle_id, kind));
    CREATE TABLE audit_log(seq BIGINT PRIMARY KEY, "at" TIMESTAMP, actor VARCHAR,
        action VARCHAR, subject VARCHAR, detail JSON, prev_hash VARCHAR, hash VARCHAR);
    """,
    """
    CREATE TABLE users(name VARCHAR PRIMARY KEY, role VARCHAR NOT NULL, password_hash VARCHAR NOT NULL,
        created_at TIMESTAMP);
    """,
    """
    CREATE TABLE guardrails(id INTEGER PRIMARY KEY, text VARCHAR NOT NULL, expected_label VARCHAR NOT NULL,
        note VARCHAR, created_at TIMESTAMP);
    CREATE TABLE drift_reports(cycle_id INTEGER PRIMARY KEY, candidate VARCHAR, production VARCHAR,
        passed BOOLEAN, report JSON, created_at TIMESTAMP);
    """,
    """
    CREATE TABLE attributions(cycle_id INTEGER, version VARCHAR, example_id BIGINT, label VARCHAR,
        predicted VARCHAR, correct BOOLEAN, target VARCHAR, tokens JSON, scores JSON, baseline VARCHAR,
        delta DOUBLE, PRIMARY KEY(cycle_id, example_id));
    CREATE TABLE diagnosis_internals(cycle_id INTEGER, kind VARCHAR, data JSON, PRIMARY KEY(cycle_id, kind));
    """,
    """
    ALTER TABLE synthetic_samples ADD COLUMN reviewed_by VARCHAR;
    ALTER TABLE synthetic_samples ADD COLUMN original_label VARCHAR;
    """,
    # v6: scaffolds (inference programs), their evaluations and A/B trials
    """
    CREATE TABLE scaffolds(id VARCHAR PRIMARY KEY, num INTEGER NOT NULL UNIQUE, name VARCHAR, parent_id VARCHAR,
        operator VARCHAR, spec JSON NOT NULL, spec_sha256 VARCHAR NOT NULL UNIQUE, cycle_id INTEGER,
        created_at TIMESTAMP, created_by VARCHAR);
    CREATE TABLE scaffold_evals(scaffold_id VARCHAR, model_version VARCHAR, split VARCHAR, n INTEGER,
        accuracy DOUBLE, coverage DOUBLE, selective_accuracy DOUBLE, guardrail_pass DOUBLE, novelty DOUBLE,
        detail JSON, "at" TIMESTAMP, PRIMARY KEY(scaffold_id, model_version, split));
    CREATE TABLE scaffold_trials(cycle_id INTEGER PRIMARY KEY, model_version VARCHAR, budget INTEGER,
        production_id VARCHAR, candidate_id VARCHAR, result JSON, created_at TIMESTAMP, updated_at TIMESTAMP);
    CREATE TABLE scaffold_adoptions(id INTEGER PRIMARY KEY, scaffold_id VARCHAR NOT NULL, previous VARCHAR,
        cycle_id INTEGER, actor VARCHAR, reason VARCHAR, "at" TIMESTAMP);
    """,
    # v7: production logs of the server (predictions and human feedback)
    """
    CREATE TABLE predictions(id VARCHAR PRIMARY KEY, "at" TIMESTAMP, text VARCHAR NOT NULL, label VARCHAR,
        confidence DOUBLE, model_version VARCHAR, scaffold_version VARCHAR, latency_ms DOUBLE);
    CREATE INDEX predictions_text ON predictions(text);
    CREATE TABLE feedback(prediction_id VARCHAR PRIMARY KEY, label VARCHAR NOT NULL, "at" TIMESTAMP,
        actor VARCHAR);
    """,
    # v8: the held-out set's two parts: `selection` (checkpoints, early stopping, diagnosis) and `gate`
    # (the gates' estimates, nothing else); filled by assign_heldout_parts
    """
    CREATE TABLE heldout_parts(example_id BIGINT PRIMARY KEY, part VARCHAR NOT NULL);
    """,
    # v9: oversight: failed sign-ins per name and window, API tokens, decisions that override failed checks
    """
    CREATE TABLE auth_failures(name VARCHAR PRIMARY KEY, window_start TIMESTAMP, window_count INTEGER,
        consecutive INTEGER, locked_until TIMESTAMP);
    CREATE TABLE api_tokens(name VARCHAR PRIMARY KEY, token_hash VARCHAR NOT NULL, prefix VARCHAR NOT NULL,
        created_at TIMESTAMP, created_by VARCHAR, revoked_at TIMESTAMP, revoked_by VARCHAR);
    ALTER TABLE gates ADD COLUMN override BOOLEAN;
    """,
    # v10: tries of the cycle's current stage that began and did not finish (a raise or a dead process)
    """
    ALTER TABLE cycles ADD COLUMN tries INTEGER DEFAULT 0;
    """,
    # v11: the human budget: pool texts curation asks a person to label (curate.ask_humans_per_cycle), with
    # the model's suggestions, and the answers, which count as seed from the next cycle on
    """
    CREATE TABLE label_requests(id INTEGER PRIMARY KEY, cycle_id INTEGER NOT NULL, example_id BIGINT,
        text VARCHAR NOT NULL, score DOUBLE, uncertainty DOUBLE, density DOUBLE, suggestions JSON,
        status VARCHAR NOT NULL, label VARCHAR, answered_by VARCHAR, answered_at TIMESTAMP, created_at TIMESTAMP);
    """,
    # v12: the traffic probe: unlabeled rows set aside at init that nothing trains on or labels, whose
    # confidences carry the gate's held-out accuracy over to traffic (core/traffic.py); an
    # evaluation's detail holds that estimate and its interval
    """
    CREATE TABLE traffic_probe(example_id BIGINT PRIMARY KEY);
    ALTER TABLE evaluations ADD COLUMN detail JSON;
    """,
    # v13: labels from traffic where they decide (core/traffic.py): a label request is asked to train
    # (`train`, the human budget) or to grade (`evaluate`: a probe row, never trained on); each version's
    # predictions on the probe; each cycle's draw of probe rows, with the probabilities that keep the
    # traffic estimates unbiased
    """
    ALTER TABLE label_requests ADD COLUMN purpose VARCHAR DEFAULT 'train';
    CREATE TABLE probe_predictions(version VARCHAR, example_id BIGINT, predicted VARCHAR, confidence DOUBLE,
        PRIMARY KEY(version, example_id));
    CREATE TABLE traffic_designs(cycle_id INTEGER PRIMARY KEY, candidate VARCHAR, production VARCHAR,
        budget INTEGER, pi_disagree DOUBLE, pi_agree DOUBLE, detail JSON, created_at TIMESTAMP);
    """,
]
HELDOUT_PARTS = ("selection", "gate")
SCHEMA_VERSION = len(MIGRATIONS)

LOCK_TIMEOUT_S = 120.0
# How a cycle can end: promoted or adopted, a gate said no, a stage kept failing, a person closed it.
END_STATUSES = ("done", "rejected", "failed", "abandoned")
EXPIRED = "timed out without a decision"
GENESIS_HASH = "0" * 64
ALL_NAMES = "*"  # auth_failures' row that counts failed sign-ins across every name


class StoreBusy(RuntimeError):
    """Another process held the database for longer than we are willing to wait."""


class SchemaError(RuntimeError):
    """The workspace was written by a newer Evolab than this one."""


class StoreConflict(RuntimeError):
    """A write was refused because the state it expected has changed (for example a gate already decided)."""


def _where_equal(**columns) -> tuple[str, list]:
    """A WHERE clause matching every given column that is not None (column names come from the code, never
    from input), and its parameters."""
    given = {column: value for column, value in columns.items() if value is not None}
    clause = "WHERE " + " AND ".join(f"{column} = ?" for column in given) if given else ""
    return clause, list(given.values())


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _is_lock_error(err: Exception) -> bool:
    text = str(err).lower()
    return "lock" in text or "different configuration" in text


def _entry_payload(prev_hash: str, at: datetime, actor: str, action: str, subject: str, detail: str) -> str:
    return json.dumps([prev_hash, at.isoformat(), actor, action, subject, detail], separators=(",", ":"))


def entry_hash(prev_hash: str, at: datetime, actor: str, action: str, subject: str, detail: str) -> str:
    """Plain SHA-256: entries written before the workspace had an audit key."""
    return hashlib.sha256(_entry_payload(prev_hash, at, actor, action, subject, detail).encode("utf-8")).hexdigest()


def entry_mac(key: bytes, prev_hash: str, at: datetime, actor: str, action: str, subject: str, detail: str) -> str:
    """HMAC-SHA256 of the same payload: only the key's holder can write an entry that verifies."""
    return auditkey.mac(key, _entry_payload(prev_hash, at, actor, action, subject, detail))


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class Store:
    """All database access for one workspace file."""

    # Threads of one process (the server) must not overlap connections with different settings.
    _process_lock = threading.RLock()
    _migrated: set[str] = set()

    def __init__(self, path: Path, patience_s: float = LOCK_TIMEOUT_S):
        # patience_s: how long a call waits for another process's lock before StoreBusy (the server
        # answers 503 after a short wait rather than holding a request thread for minutes)
        self.path = Path(path)
        self.patience_s = patience_s

    # -- connection policy -------------------------------------------------------------------
    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.patience_s
        delay = 0.02
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
            except (duckdb.IOException, duckdb.ConnectionException) as err:
                if not _is_lock_error(err):
                    raise
                if time.monotonic() > deadline:
                    raise StoreBusy(f"workspace database {self.path} stayed locked by another process "
                                    f"for {self.patience_s:g}s") from None
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)

    @contextmanager
    def _tx(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        # Another thread of this process waiting for the file counts against the same patience.
        if not self._process_lock.acquire(timeout=self.patience_s):
            raise StoreBusy(f"workspace database {self.path} stayed busy in this process for {self.patience_s:g}s")
        try:
            self._ensure_schema()
            con = self._connect(read_only)
            try:
                con.execute("BEGIN TRANSACTION")
                try:
                    yield con
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
            finally:
                con.close()
        finally:
            self._process_lock.release()

    def _read(self, sql: str, params: list | None = None) -> pd.DataFrame:
        if not self.path.exists():
            raise FileNotFoundError(f"no workspace database at {self.path}")
        with self._tx(read_only=True) as con:
            return con.execute(sql, params or []).df()

    def _ensure_schema(self) -> None:
        key = str(self.path.resolve())
        if key in Store._migrated:
            return
        con = self._connect(read_only=False)
        try:
            con.execute("BEGIN TRANSACTION")
            has_meta = con.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'meta'").fetchone()[0]
            current = 0
            if has_meta:
                row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                current = int(row[0]) if row else 0
            if current > SCHEMA_VERSION:
                con.execute("ROLLBACK")
                raise SchemaError(f"workspace schema v{current} is newer than this Evolab (v{SCHEMA_VERSION})")
            for version in range(current, SCHEMA_VERSION):
                con.execute(MIGRATIONS[version])
            if 0 < current < 12:
                from core.config import DataConfig

                defaults = DataConfig()
                if current < 8:  # a workspace made before the held-out set had parts gets them now
                    self._assign_heldout_parts(con, defaults.selection_fraction, defaults.seed)
                # a probe only where nothing has trained on the pool yet: rows a version learned from would
                # read as easy traffic
                if not con.execute("SELECT count(*) FROM synthetic_samples").fetchone()[0]:
                    self._assign_traffic_probe(con, defaults)
            con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
            con.execute("COMMIT")
        finally:
            con.close()
        Store._migrated.add(key)

    def migrate(self) -> int:
        self._ensure_schema()
        return SCHEMA_VERSION

    def schema_version(self) -> int:
        return int(self._read("SELECT value FROM meta WHERE key = 'schema_version'").iloc[0, 0])

    # -- audit (written inside the transaction of the action it records) ----------------------
    @staticmethod
    def _audit(con, actor: str, action: str, subject: str, detail: dict | None = None) -> None:
        keying = Store._audit_keying(con)
        if keying is None:  # a log begun before audit keys: keyed from here on, and the log says so
            keying = Store._start_keying(con)
            Store._append_entry(con, keying, "engine", "audit_keyed", "audit_log",
                                {"plain_entries": keying[1] - 1, "key_file": str(auditkey.key_path(keying[0]))})
        Store._append_entry(con, keying, actor, action, subject, detail)

    @staticmethod
    def _audit_keying(con) -> tuple[str, int] | None:
        """(workspace id, first keyed seq), or None for a log from before keys. Refuses (no entry written) a log
        whose key identity was tampered with: keying it afresh would launder whatever happened to it."""
        meta = dict(con.execute("SELECT key, value FROM meta WHERE key IN ('workspace_id', 'audit_keyed_from', "
                                "'audit_key_check')").fetchall())
        workspace_id, marker = meta.get("workspace_id"), auditkey.read_marker(Store._database(con))
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
            auditkey.write_marker(Store._database(con), workspace_id)
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
        Store._set_head(con, key, last, last_hash, last + 1)
        auditkey.write_marker(Store._database(con), workspace_id)
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
        Store._set_head(con, key, seq, digest, keyed_from)

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
            return (Store._audit_keying(con) or Store._start_keying(con))[0]

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

    # -- guardrail probes and drift ---------------------------------------------------------------
    def add_guardrails(self, probes: pd.DataFrame, actor: str, source: str) -> int:
        with self._tx() as con:
            start = con.execute("SELECT coalesce(max(id), 0) + 1 FROM guardrails").fetchone()[0]
            frame = probes.assign(id=range(start, start + len(probes)), created_at=utcnow())
            _register(con, "probes_df", frame)
            con.execute("INSERT INTO guardrails SELECT id, text, expected_label, note, created_at FROM probes_df")
            self._audit(con, actor, "guardrails_added", "guardrails", {"count": len(probes), "source": source})
            return len(probes)

    def guardrails(self) -> pd.DataFrame:
        return self._read("SELECT * FROM guardrails ORDER BY id")

    def save_drift(self, cycle_id: int, candidate: str, production: str, passed: bool, report: dict,
                   next_stage: str) -> None:
        with self._tx() as con:
            con.execute("INSERT OR REPLACE INTO drift_reports VALUES (?, ?, ?, ?, ?, ?)",
                        [cycle_id, candidate, production, passed, _json(report), utcnow()])
            self._set_stage(con, cycle_id, next_stage)

    def drift_report(self, cycle_id: int) -> dict | None:
        row = _first(self._read("SELECT * FROM drift_reports WHERE cycle_id = ?", [cycle_id]))
        if row:
            row["report"] = json.loads(row["report"])
        return row

    # -- users --------------------------------------------------------------------------------
    def add_user(self, name: str, role: str, password_hash: str, actor: str) -> None:
        with self._tx() as con:
            if con.execute("SELECT 1 FROM users WHERE name = ?", [name]).fetchone():
                raise StoreConflict(f"user '{name}' already exists")
            con.execute("INSERT INTO users VALUES (?, ?, ?, ?)", [name, role, password_hash, utcnow()])
            self._audit(con, actor, "user_added", f"user:{name}", {"role": role})

    def user(self, name: str) -> dict | None:
        return _first(self._read("SELECT * FROM users WHERE name = ?", [name]))

    def approver_count(self) -> int:
        return int(self._read("SELECT count(*) FROM users WHERE role = 'approver'").iloc[0, 0])

    def set_role(self, name: str, role: str, actor: str) -> str:
        with self._tx() as con:
            row = con.execute("SELECT role FROM users WHERE name = ?", [name]).fetchone()
            if row is None:
                raise KeyError(f"no user '{name}'")
            self._keep_an_approver(con, name, role)
            con.execute("UPDATE users SET role = ? WHERE name = ?", [role, name])
            self._audit(con, actor, "user_role_changed", f"user:{name}", {"from": row[0], "to": role})
            return row[0]

    def remove_user(self, name: str, actor: str) -> None:
        with self._tx() as con:
            row = con.execute("SELECT role FROM users WHERE name = ?", [name]).fetchone()
            if row is None:
                raise KeyError(f"no user '{name}'")
            self._keep_an_approver(con, name, None)
            con.execute("DELETE FROM users WHERE name = ?", [name])
            con.execute("DELETE FROM auth_failures WHERE name = ?", [name])
            self._audit(con, actor, "user_removed", f"user:{name}", {"role": row[0]})

    @staticmethod
    def _keep_an_approver(con, name: str, new_role: str | None) -> None:
        """A workspace that has had an approver keeps one: otherwise nobody could decide a gate again."""
        others = con.execute("SELECT count(*) FROM users WHERE role = 'approver' AND name <> ?", [name]).fetchone()[0]
        if new_role != "approver" and not others:
            raise StoreConflict(f"'{name}' is the last approver; add another approver first")

    def auth_failure(self, name: str) -> dict | None:
        return _first(self._read("SELECT * FROM auth_failures WHERE name = ?", [name]))

    def record_auth_failure(self, name: str, action: str, window_s: float, lock_after: int, base_delay_s: float,
                            max_delay_s: float, global_audited: int) -> dict:
        """Count a failed sign-in for `name` (known or not). The first failure of each window is audited, with
        the count of the window before; a lockout is audited when it starts. A flood stays a few entries: across
        all names at most `global_audited` per window, then one `auth_flood` entry (the row named ALL_NAMES
        counts them; no user name can be '*')."""
        from datetime import timedelta

        with self._tx() as con:
            now = utcnow()
            row = con.execute("SELECT window_start, window_count, consecutive FROM auth_failures WHERE name = ?",
                              [name]).fetchone()
            start, count, consecutive = row if row else (None, 0, 0)
            new_window = start is None or (now - start).total_seconds() > window_s
            previous = count if new_window else None
            start, count, consecutive = (now if new_window else start), (1 if new_window else count + 1), consecutive + 1
            locked_until = None
            if consecutive >= lock_after:
                delay = min(max_delay_s, base_delay_s * 2 ** (consecutive - lock_after))
                locked_until = now + timedelta(seconds=delay)
            con.execute("INSERT OR REPLACE INTO auth_failures VALUES (?, ?, ?, ?, ?)",
                        [name, start, count, consecutive, locked_until])
            # all names together: window_count failures, consecutive the entries audited in this window
            row = con.execute("SELECT window_start, window_count, consecutive FROM auth_failures WHERE name = ?",
                              [ALL_NAMES]).fetchone()
            if row is None or (now - row[0]).total_seconds() > window_s:
                row = (now, 0, 0)
            g_start, g_failures, g_audited = row[0], row[1] + 1, row[2]
            if new_window or consecutive == lock_after:
                if g_audited < global_audited:
                    detail = {"failures_in_window": count, "consecutive": consecutive, "window_s": window_s}
                    if previous:
                        detail["failures_in_previous_window"] = previous
                    if locked_until is not None:
                        detail["locked_until"] = locked_until.isoformat()
                    self._audit(con, name or "?", "auth_refused", action, detail)
                elif g_audited == global_audited:
                    self._audit(con, "engine", "auth_flood", "sign-in", {
                        "failures_in_window": g_failures, "window_s": window_s, "audited_in_window": g_audited,
                        "note": "further failed sign-ins in this window are counted, not audited one by one"})
                g_audited += 1
            con.execute("INSERT OR REPLACE INTO auth_failures VALUES (?, ?, ?, ?, NULL)",
                        [ALL_NAMES, g_start, g_failures, g_audited])
            return {"consecutive": consecutive, "locked_until": locked_until}

    def clear_auth_failures(self, name: str) -> None:
        with self._tx() as con:
            con.execute("DELETE FROM auth_failures WHERE name = ?", [name])

    # -- API tokens (only a salted hash is kept) ------------------------------------------------------
    def add_token(self, name: str, token_hash: str, prefix: str, actor: str) -> None:
        with self._tx() as con:
            if con.execute("SELECT 1 FROM api_tokens WHERE name = ?", [name]).fetchone():
                raise StoreConflict(f"token '{name}' already exists (revoke it, or pick another name)")
            con.execute("INSERT INTO api_tokens VALUES (?, ?, ?, ?, ?, NULL, NULL)",
                        [name, token_hash, prefix, utcnow(), actor])
            self._audit(con, actor, "token_added", f"token:{name}", {"prefix": prefix})

    def revoke_token(self, name: str, actor: str) -> None:
        with self._tx() as con:
            row = con.execute("SELECT revoked_at FROM api_tokens WHERE name = ?", [name]).fetchone()
            if row is None:
                raise KeyError(f"no token '{name}'")
            if row[0] is not None:
                raise StoreConflict(f"token '{name}' was already revoked")
            con.execute("UPDATE api_tokens SET revoked_at = ?, revoked_by = ? WHERE name = ?", [utcnow(), actor, name])
            self._audit(con, actor, "token_revoked", f"token:{name}", {})

    def tokens(self, active_only: bool = False) -> pd.DataFrame:
        where = "WHERE revoked_at IS NULL" if active_only else ""
        return self._read(f"SELECT * FROM api_tokens {where} ORDER BY name")

    def users(self) -> pd.DataFrame:
        return self._read("SELECT name, role, created_at FROM users ORDER BY name")

    # -- datasets -----------------------------------------------------------------------------
    def load_datasets(self, labels: list[str], parts: list[tuple[str, str, str, pd.DataFrame]],
                      actor: str, detail: dict, drawing) -> None:
        """Store the label space and every split at once: parts are (split, source, sha256, frame); drawing
        (config.data) says how the held-out set's parts and the traffic probe are drawn."""
        with self._tx() as con:
            if con.execute("SELECT count(*) FROM examples").fetchone()[0]:
                raise StoreConflict("this workspace already holds data")
            labels_df = pd.DataFrame({"idx": range(len(labels)), "name": labels})
            _register(con, "labels_df", labels_df)
            con.execute("INSERT INTO labels SELECT idx, name FROM labels_df")
            next_id = 1
            for dataset_id, (split, source, sha, frame) in enumerate(parts, start=1):
                con.execute("INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?)",
                            [dataset_id, split, source, len(frame), sha, utcnow()])
                rows = pd.DataFrame({
                    "id": range(next_id, next_id + len(frame)),
                    "dataset_id": dataset_id,
                    "split": split,
                    "text": frame["text"].to_numpy(),
                    "label": frame["label"].to_numpy() if "label" in frame else None,
                    "row_num": frame["row_num"].to_numpy(),
                })
                _register(con, "rows_df", rows)
                con.execute("INSERT INTO examples SELECT id, dataset_id, split, text, label, row_num FROM rows_df")
                con.unregister("rows_df")
                next_id += len(frame)
            self._assign_heldout_parts(con, drawing.selection_fraction, drawing.seed)
            probe = self._assign_traffic_probe(con, drawing)
            self._audit(con, actor, "data_loaded", "workspace", {**detail, "traffic_probe": probe})

    @staticmethod
    def _assign_heldout_parts(con, selection_fraction: float, seed: int) -> None:
        """Split each class's held-out rows once, in a stable seeded order: floor(n * fraction) rows (at least
        one when the class has two) go to `selection`, the rest to `gate`, which so always has one."""
        con.execute(
            "INSERT INTO heldout_parts SELECT id, CASE WHEN n >= 2 AND rn <= greatest(1, floor(n * ?)) "
            "THEN 'selection' ELSE 'gate' END FROM (SELECT id, count(*) OVER (PARTITION BY label) AS n, "
            "row_number() OVER (PARTITION BY label ORDER BY md5(concat(?, ':', id))) AS rn "
            "FROM examples WHERE split = 'heldout') WHERE id NOT IN (SELECT example_id FROM heldout_parts)",
            [selection_fraction, str(seed)])

    @staticmethod
    def _assign_traffic_probe(con, drawing) -> int:
        """Set aside a seeded share of the unlabeled split (capped) as the traffic probe, once; a pool
        smaller than drawing.probe_min_pool keeps every row for curation and gets no probe."""
        pool = con.execute("SELECT count(*) FROM examples WHERE split = 'unlabeled'").fetchone()[0]
        size = min(drawing.probe_max_rows, int(pool * drawing.probe_fraction))
        if pool < drawing.probe_min_pool or size < 1:
            return 0
        con.execute("INSERT INTO traffic_probe SELECT id FROM examples WHERE split = 'unlabeled' "
                    "AND id NOT IN (SELECT example_id FROM traffic_probe) "
                    "ORDER BY md5(concat(?, ':probe:', id)) LIMIT ?", [str(drawing.seed), size])
        return size

    def traffic_probe(self) -> pd.DataFrame:
        """The probe's rows (id, text): unlabeled traffic no curation, training or label request reads."""
        return self._read("SELECT x.id, x.text FROM examples x JOIN traffic_probe p ON p.example_id = x.id "
                          "ORDER BY x.id")

    def heldout(self, part: str) -> pd.DataFrame:
        """One part of the held-out set: id, text, label."""
        if part not in HELDOUT_PARTS:
            raise ValueError(f"unknown held-out part '{part}'")
        return self._read("SELECT x.id, x.text, x.label FROM examples x JOIN heldout_parts p ON p.example_id = x.id "
                          "WHERE p.part = ? ORDER BY x.id", [part])

    def labels(self) -> list[str]:
        return self._read("SELECT name FROM labels ORDER BY idx")["name"].tolist()

    def examples(self, split: str) -> pd.DataFrame:
        return self._read("SELECT id, text, label FROM examples WHERE split = ? ORDER BY id", [split])

    def datasets(self) -> pd.DataFrame:
        return self._read("SELECT * FROM datasets ORDER BY id")

    # -- cycles -------------------------------------------------------------------------------
    def create_cycle(self, kind: str, stage: str, parent_version: str | None, actor: str) -> int:
        with self._tx() as con:
            return self._create_cycle(con, kind, stage, parent_version, actor)

    def _create_cycle(self, con, kind: str, stage: str, parent_version: str | None, actor: str) -> int:
        open_ = con.execute("SELECT id FROM cycles WHERE status IN ('running', 'waiting')").fetchone()
        if open_:
            raise StoreConflict(f"cycle {open_[0]} is still open")
        cid = con.execute("SELECT coalesce(max(id), 0) + 1 FROM cycles").fetchone()[0]
        now = utcnow()
        con.execute("INSERT INTO cycles (id, kind, status, stage, parent_version, created_at, updated_at, tries) "
                    "VALUES (?, ?, 'running', ?, ?, ?, ?, 0)", [cid, kind, stage, parent_version, now, now])
        self._audit(con, actor, "cycle_started", f"cycle:{cid}", {"kind": kind, "parent": parent_version})
        return cid

    @staticmethod
    def _set_stage(con, cycle_id: int, stage: str, status: str = "running") -> None:
        """Move an open cycle on (a new stage starts with no failed tries); a closed cycle never moves again,
        so a stage that finishes after its cycle was abandoned or failed writes nothing."""
        finished = utcnow() if status in END_STATUSES else None
        moved = con.execute("UPDATE cycles SET stage = ?, status = ?, updated_at = ?, finished_at = ?, tries = 0 "
                            "WHERE id = ? AND status IN ('running', 'waiting') RETURNING id",
                            [stage, status, utcnow(), finished, cycle_id]).fetchall()
        if not moved:
            row = con.execute("SELECT status FROM cycles WHERE id = ?", [cycle_id]).fetchone()
            raise StoreConflict(f"cycle {cycle_id} is {row[0] if row else 'missing'}; it cannot move to {stage}")

    def set_stage(self, cycle_id: int, stage: str, status: str = "running") -> None:
        with self._tx() as con:
            self._set_stage(con, cycle_id, stage, status)

    def begin_stage_try(self, cycle_id: int) -> int:
        """Count one more try of the cycle's current stage; returns the tries before this one that did not
        finish. Counted before the stage runs, so a process killed inside it counts too."""
        with self._tx() as con:
            row = con.execute("UPDATE cycles SET tries = coalesce(tries, 0) + 1 WHERE id = ? "
                              "RETURNING tries", [cycle_id]).fetchone()
            return int(row[0]) - 1

    def note_stage_error(self, cycle_id: int, error: str) -> None:
        with self._tx() as con:
            con.execute("UPDATE cycles SET error = ?, updated_at = ? WHERE id = ?", [error, utcnow(), cycle_id])

    def _close_cycle(self, con, cycle_id: int, status: str, actor: str, action: str, detail: dict) -> None:
        """End an open cycle where it stands: its pending gates are closed as rejected and its candidate stops
        being the candidate, in one transaction with the audit entry."""
        row = con.execute("SELECT stage, candidate_version FROM cycles WHERE id = ?", [cycle_id]).fetchone()
        if row is None:
            raise KeyError(f"no cycle {cycle_id}")
        self._set_stage(con, cycle_id, row[0], status)
        reason = f"cycle {status}: {detail.get('reason') or detail.get('error')}"
        con.execute("UPDATE gates SET status = 'rejected', decided_at = ?, decided_by = ?, comment = ?, "
                    "automatic = ? WHERE cycle_id = ? AND status = 'pending'",
                    [utcnow(), actor, reason, status == "failed", cycle_id])
        if row[1] is not None and con.execute("SELECT version FROM aliases WHERE name = 'candidate'"
                                              ).fetchone() == (row[1],):
            self._move_alias(con, "candidate", None, actor, status)
        self._audit(con, actor, action, f"cycle:{cycle_id}", {"stage": row[0], **detail})

    def fail_cycle(self, cycle_id: int, error: str, actor: str) -> None:
        with self._tx() as con:
            con.execute("UPDATE cycles SET error = ? WHERE id = ?", [error, cycle_id])
            self._close_cycle(con, cycle_id, "failed", actor, "cycle_failed", {"error": error})

    def abandon_cycle(self, cycle_id: int, actor: str, reason: str) -> None:
        with self._tx() as con:
            con.execute("UPDATE cycles SET error = ? WHERE id = ?", [f"abandoned by {actor}: {reason}", cycle_id])
            self._close_cycle(con, cycle_id, "abandoned", actor, "cycle_abandoned", {"reason": reason})

    def cycle(self, cycle_id: int) -> dict | None:
        df = self._read("SELECT * FROM cycles WHERE id = ?", [cycle_id])
        return _first(df)

    def open_cycle(self) -> dict | None:
        return _first(self._read("SELECT * FROM cycles WHERE status IN ('running', 'waiting') ORDER BY id LIMIT 1"))

    def cycles(self) -> pd.DataFrame:
        return self._read("SELECT * FROM cycles ORDER BY id")

    def record_stage_run(self, cycle_id: int, stage: str, started_at: datetime, seconds: float,
                         peak_rss_mb: float, detail: dict | None = None) -> None:
        """A stage that returned (moved on, or waits at a gate): its tries start over."""
        with self._tx() as con:
            con.execute("UPDATE cycles SET tries = 0 WHERE id = ?", [cycle_id])
            con.execute("INSERT OR REPLACE INTO stage_runs VALUES (?, ?, ?, ?, ?, ?)",
                        [cycle_id, stage, started_at, seconds, peak_rss_mb, _json(detail or {})])

    def stage_runs(self, cycle_id: int | None = None) -> pd.DataFrame:
        if cycle_id is None:
            return self._read("SELECT * FROM stage_runs ORDER BY cycle_id, started_at")
        return self._read("SELECT * FROM stage_runs WHERE cycle_id = ? ORDER BY started_at", [cycle_id])

    # -- the dashboard's overview: every cycle's story, and what waits for a person, in a few reads --
    def cycle_timeline(self) -> pd.DataFrame:
        """One row per cycle, newest first, in one query: the cycle's own columns; its stages in the order
        they started (`stages`: a list of {stage, seconds}); the first finding of its diagnosis; samples
        generated and kept; its last gate (the one that decided it or waits: id, kind, status, decided_by,
        automatic, override, comment, deadline, the gain and reasons its checks recorded); the gate-part
        estimate (accuracy, n) of its candidate and of the production it started from; `last_stage_end`; and
        `last_progress`, the newest time the store saw it move (stage change, stage start or end, a training
        metric, a stage's error)."""
        return self._read("""
            WITH runs AS (
                SELECT cycle_id, list(struct_pack(stage := stage, seconds := seconds) ORDER BY started_at) AS stages,
                       max(started_at) AS last_stage_start,
                       max(started_at + to_microseconds(CAST(round(seconds * 1e6) AS BIGINT))) AS last_stage_end
                FROM stage_runs GROUP BY cycle_id),
            samples AS (
                SELECT cycle_id, count(*) AS generated,
                       count(*) FILTER (WHERE status IN ('kept', 'approved')) AS kept
                FROM synthetic_samples GROUP BY cycle_id),
            findings AS (
                SELECT cycle_id, kind AS finding_kind, subject AS finding_subject, action AS finding_action
                FROM diagnoses QUALIFY row_number() OVER (PARTITION BY cycle_id ORDER BY rank) = 1),
            last_gate AS (
                SELECT cycle_id, id AS gate_id, kind AS gate_kind, status AS gate_status, decided_by, decided_at,
                       automatic, override, comment AS gate_comment, deadline AS gate_deadline,
                       TRY_CAST(checks->>'$.gain' AS DOUBLE) AS gate_gain, checks->'$.reasons' AS gate_reasons
                FROM gates QUALIFY row_number() OVER (PARTITION BY cycle_id ORDER BY id DESC) = 1),
            estimates AS (SELECT version, accuracy, n FROM evaluations WHERE split = 'gate'),
            traffic AS (SELECT version, detail FROM evaluations WHERE split = 'traffic'),
            metrics AS (
                SELECT run_id, max("at") AS last_metric FROM train_metrics
                WHERE run_id IN (SELECT 'cycle_' || id FROM cycles WHERE status IN ('running', 'waiting'))
                GROUP BY run_id)
            SELECT c.id AS cycle_id, c.kind, c.status, c.stage, c.parent_version, c.candidate_version, c.error,
                   c.tries, c.created_at, c.updated_at, c.finished_at, r.stages,
                   coalesce(s.generated, 0) AS generated, coalesce(s.kept, 0) AS kept,
                   f.finding_kind, f.finding_subject, f.finding_action,
                   g.gate_id, g.gate_kind, g.gate_status, g.decided_by, g.decided_at, g.automatic, g.override,
                   g.gate_comment, g.gate_deadline, g.gate_gain, g.gate_reasons,
                   ce.accuracy AS candidate_accuracy, ce.n AS candidate_n,
                   pe.accuracy AS production_accuracy, pe.n AS production_n,
                   ct.detail AS candidate_traffic, pt.detail AS production_traffic, r.last_stage_end,
                   greatest(c.updated_at, r.last_stage_start, r.last_stage_end, m.last_metric) AS last_progress
            FROM cycles c
            LEFT JOIN runs r ON r.cycle_id = c.id
            LEFT JOIN samples s ON s.cycle_id = c.id
            LEFT JOIN findings f ON f.cycle_id = c.id
            LEFT JOIN last_gate g ON g.cycle_id = c.id
            LEFT JOIN estimates ce ON ce.version = c.candidate_version
            LEFT JOIN estimates pe ON pe.version = c.parent_version
            LEFT JOIN traffic ct ON ct.version = c.candidate_version
            LEFT JOIN traffic pt ON pt.version = c.parent_version
            LEFT JOIN metrics m ON m.run_id = 'cycle_' || c.id
            ORDER BY c.id DESC""")

    def pending_counts(self) -> dict[str, int]:
        """How many gates wait for a decision and how many label requests for an answer (one cheap query)."""
        row = self._read("SELECT (SELECT count(*) FROM gates WHERE status = 'pending') AS gates, "
                         "(SELECT count(*) FROM label_requests WHERE status = 'pending') AS label_requests")
        return {k: int(v) for k, v in row.iloc[0].items()}

    def attention(self) -> dict:
        """What waits for a person, in one transaction: the pending gates (soonest deadline first, with their
        cycle's candidate and production), the label requests waiting, and the kept samples nobody has
        reviewed of cycles whose data_review gate is pending."""
        if not self.path.exists():
            raise FileNotFoundError(f"no workspace database at {self.path}")
        with self._tx(read_only=True) as con:
            gates = con.execute(
                "SELECT g.id, g.cycle_id, g.kind, g.policy, g.created_at, g.deadline, "
                "c.candidate_version AS candidate, c.parent_version AS production "
                "FROM gates g LEFT JOIN cycles c ON c.id = g.cycle_id WHERE g.status = 'pending' "
                "ORDER BY g.deadline NULLS LAST, g.id").df()
            labels, samples = con.execute(
                "SELECT (SELECT count(*) FROM label_requests WHERE status = 'pending'), "
                "(SELECT count(*) FROM synthetic_samples s WHERE s.status IN ('kept', 'approved') "
                " AND s.reviewed_by IS NULL AND s.cycle_id IN "
                " (SELECT cycle_id FROM gates WHERE kind = 'data_review' AND status = 'pending'))").fetchone()
        return {"gates": gates, "label_requests": int(labels), "samples_to_review": int(samples)}

    # -- stage outputs: each replaces the cycle's earlier output and advances the stage at once --
    def save_diagnosis(self, cycle_id: int, rows: pd.DataFrame, next_stage: str | None,
                       attributions: pd.DataFrame | None = None, internals: dict | None = None,
                       version: str | None = None) -> None:
        """Findings, attributions and internals of one diagnosis, replacing any earlier one of the cycle."""
        with self._tx() as con:
            for table in ("diagnoses", "attributions", "diagnosis_internals"):
                con.execute(f"DELETE FROM {table} WHERE cycle_id = ?", [cycle_id])
            if len(rows):
                frame = rows.assign(cycle_id=cycle_id)
                _register(con, "diag_df", frame)
                con.execute("INSERT INTO diagnoses SELECT cycle_id, rank, kind, subject, severity, "
                            "detail, action FROM diag_df")
            if attributions is not None and len(attributions):
                frame = attributions.assign(cycle_id=cycle_id, version=version)
                _register(con, "attr_df", frame)
                con.execute("INSERT INTO attributions SELECT cycle_id, version, example_id, label, predicted, "
                            "correct, target, tokens, scores, baseline, delta FROM attr_df")
            for kind, data in (internals or {}).items():
                con.execute("INSERT INTO diagnosis_internals VALUES (?, ?, ?)", [cycle_id, kind, _json(data)])
            if next_stage:
                self._set_stage(con, cycle_id, next_stage)

    def latest_diagnosis(self, before_cycle: int | None = None) -> tuple[int | None, pd.DataFrame]:
        """The newest diagnosis (of a cycle before `before_cycle` when given): its cycle id and findings."""
        where, params = ("WHERE cycle_id < ?", [before_cycle]) if before_cycle is not None else ("", [])
        df = self._read(f"SELECT max(cycle_id) AS c FROM diagnoses {where}", params)
        if df.empty or pd.isna(df.iloc[0, 0]):
            return None, pd.DataFrame()
        cid = int(df.iloc[0, 0])
        return cid, self.diagnoses(cid)

    def attributions(self, cycle_id: int) -> pd.DataFrame:
        return self._read("SELECT a.*, x.text FROM attributions a JOIN examples x ON x.id = a.example_id "
                          "WHERE a.cycle_id = ? ORDER BY a.correct, a.example_id", [cycle_id])

    def diagnosis_internals(self, cycle_id: int) -> dict:
        df = self._read("SELECT kind, data FROM diagnosis_internals WHERE cycle_id = ?", [cycle_id])
        return {row.kind: json.loads(row.data) for row in df.itertuples()}

    def diagnoses(self, cycle_id: int) -> pd.DataFrame:
        return self._read("SELECT * FROM diagnoses WHERE cycle_id = ? ORDER BY rank", [cycle_id])

    def save_samples(self, cycle_id: int, samples: pd.DataFrame, next_stage: str,
                     requests: pd.DataFrame | None = None) -> None:
        """The curate stage's output: its samples and the texts it asks people to label (example_id, text,
        score, uncertainty, density, suggestions), replacing an earlier run's; answered requests stay."""
        with self._tx() as con:
            self._save_label_requests(con, cycle_id, requests)
            con.execute("DELETE FROM synthetic_samples WHERE cycle_id = ?", [cycle_id])
            start = con.execute("SELECT coalesce(max(id), 0) + 1 FROM synthetic_samples").fetchone()[0]
            if len(samples):
                frame = samples.assign(id=range(start, start + len(samples)), cycle_id=cycle_id,
                                       created_at=utcnow())
                _register(con, "samples_df", frame)
                con.execute("INSERT INTO synthetic_samples SELECT id, cycle_id, generator, parent_id, text, "
                            "label, confidence, difficulty, scores, status, reason, created_at, NULL, NULL "
                            "FROM samples_df")
            self._set_stage(con, cycle_id, next_stage)

    REVIEW_ACTIONS = ("approve", "reject", "relabel")

    def review_samples(self, ids: list[int], action: str, by: str, label: str | None = None,
                       comment: str = "") -> int:
        """A person's decision on samples; it wins over every verifier and is audited."""
        if action not in self.REVIEW_ACTIONS:
            raise ValueError(f"unknown review action '{action}'")
        if not ids:
            raise ValueError("no samples selected")
        with self._tx() as con:
            found = con.execute("SELECT count(*) FROM synthetic_samples WHERE id IN (SELECT unnest(?))",
                                [ids]).fetchone()[0]
            if found != len(set(ids)):
                raise KeyError(f"{len(set(ids)) - found} of the selected sample ids do not exist")
            if action == "relabel":
                if label is None or not con.execute("SELECT 1 FROM labels WHERE name = ?", [label]).fetchone():
                    raise ValueError(f"unknown label '{label}'")
                con.execute("UPDATE synthetic_samples SET original_label = coalesce(original_label, label), "
                            "label = ?, status = 'approved', reason = ?, reviewed_by = ? "
                            "WHERE id IN (SELECT unnest(?))", [label, f"relabelled by {by}", by, ids])
            else:
                status = "approved" if action == "approve" else "rejected"
                con.execute("UPDATE synthetic_samples SET status = ?, reason = ?, reviewed_by = ? "
                            "WHERE id IN (SELECT unnest(?))", [status, f"{status} by {by}", by, ids])
            self._audit(con, by, f"samples_{action}", "samples", {"ids": sorted(set(ids))[:1000],
                                                                  "count": len(set(ids)), "label": label,
                                                                  "comment": comment})
            return len(set(ids))

    def reviewed_samples(self, before_cycle: int) -> pd.DataFrame:
        """The latest human decision per text from earlier cycles."""
        return self._read("SELECT text, label, status, reviewed_by FROM synthetic_samples "
                          "WHERE reviewed_by IS NOT NULL AND cycle_id < ? "
                          "QUALIFY row_number() OVER (PARTITION BY text ORDER BY cycle_id DESC, id DESC) = 1",
                          [before_cycle])

    @staticmethod
    def _sample_filter(cycle_id=None, status=None, generator=None, label=None, search=None, difficulty=None,
                       min_confidence=None) -> tuple[str, list]:
        where, params = [], []
        if min_confidence is not None:
            where.append("confidence >= ?")
            params.append(float(min_confidence))
        for column, value in (("cycle_id", cycle_id), ("status", status), ("generator", generator),
                              ("label", label), ("difficulty", difficulty)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if search and search.strip():
            where.append("contains(lower(text), lower(?))")
            params.append(search.strip())
        return (f"WHERE {' AND '.join(where)}" if where else ""), params

    def sample_query(self, limit: int | None = None, offset: int = 0, **filters) -> pd.DataFrame:
        """Filtering and paging in SQL, so a million samples never pass through pandas whole."""
        clause, params = self._sample_filter(**filters)
        page = f"LIMIT {int(limit)} OFFSET {int(offset)}" if limit is not None else ""
        return self._read(f"SELECT * FROM synthetic_samples {clause} ORDER BY id {page}", params)

    SAMPLE_PAGE_COLUMNS = ["id", "cycle_id", "generator", "status", "label", "confidence", "difficulty", "reason",
                           "text", "parent_id", "scores", "created_at"]

    def sample_page(self, page: int = 1, page_size: int = 50, **filters) -> tuple[pd.DataFrame, int, int]:
        """One page of matching samples: (rows, total matching, page actually shown), read in one transaction
        so the count and the page agree while the engine writes."""
        clause, params = self._sample_filter(**filters)
        page_size = max(1, int(page_size))
        with self._tx(read_only=True) as con:
            total = con.execute(f"SELECT count(*) FROM synthetic_samples {clause}", params).fetchone()[0]
            last = max(1, -(-total // page_size))
            page = min(max(1, int(page)), last)
            rows = con.execute(f"SELECT {', '.join(self.SAMPLE_PAGE_COLUMNS)} FROM synthetic_samples {clause} "
                               f"ORDER BY id LIMIT ? OFFSET ?", [*params, page_size, (page - 1) * page_size]).df()
        return rows, int(total), page

    def sample_facets(self) -> dict[str, list]:
        """The distinct values a sample browser can filter on."""
        with self._tx(read_only=True) as con:
            def distinct(column: str) -> list:
                return [r[0] for r in con.execute(f"SELECT DISTINCT {column} FROM synthetic_samples "
                                                  f"WHERE {column} IS NOT NULL ORDER BY 1").fetchall()]
            return {c: distinct(c) for c in ("cycle_id", "generator", "status", "label", "difficulty")}

    def samples(self, cycle_id: int | None = None, status: str | None = None) -> pd.DataFrame:
        clause, params = _where_equal(cycle_id=cycle_id, status=status)
        return self._read(f"SELECT * FROM synthetic_samples {clause} ORDER BY id", params)

    # -- the human budget: texts curation asks a person to label, and their answers -------------
    LABEL_REQUEST_COLUMNS = ["example_id", "text", "score", "uncertainty", "density", "suggestions"]

    def _save_label_requests(self, con, cycle_id: int, requests: pd.DataFrame | None, purpose: str = "train") -> None:
        # New ids start above every id before the delete, so a rerun never reuses a key in one transaction.
        start = con.execute("SELECT coalesce(max(id), 0) + 1 FROM label_requests").fetchone()[0]
        con.execute("DELETE FROM label_requests WHERE cycle_id = ? AND status = 'pending' AND purpose = ?",
                    [cycle_id, purpose])
        if requests is None or not len(requests):
            return
        asked = {r[0] for r in con.execute("SELECT text FROM label_requests").fetchall()}
        frame = requests[~requests["text"].isin(asked)][self.LABEL_REQUEST_COLUMNS].drop_duplicates("text")
        if not len(frame):
            return
        frame = frame.assign(id=range(start, start + len(frame)), cycle_id=cycle_id, created_at=utcnow(),
                             purpose=purpose)
        _register(con, "requests_df", frame)
        con.execute("INSERT INTO label_requests SELECT id, cycle_id, example_id, text, score, uncertainty, density, "
                    "suggestions, 'pending', NULL, NULL, NULL, created_at, purpose FROM requests_df")
        con.unregister("requests_df")
        self._audit(con, "engine", "labels_requested", f"cycle:{cycle_id}",
                    {"count": len(frame), "purpose": purpose, "ids": frame["id"].astype(int).tolist()})

    def save_traffic_design(self, cycle_id: int, design: dict, requests: pd.DataFrame,
                            next_stage: str | None) -> None:
        """A cycle's draw of probe rows to label (core/traffic.py) with its requests, in one transaction. An
        earlier cycle's evaluation requests still pending are withdrawn: their draw is over, and a person's
        budget goes to the rows this candidate is graded on."""
        with self._tx() as con:
            if con.execute("SELECT 1 FROM traffic_designs WHERE cycle_id = ?", [cycle_id]).fetchone():
                raise StoreConflict(f"cycle {cycle_id} already drew its traffic labels")
            con.execute("UPDATE label_requests SET status = 'withdrawn' WHERE purpose = 'evaluate' "
                        "AND status = 'pending' AND cycle_id <> ?", [cycle_id])
            con.execute("INSERT INTO traffic_designs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [cycle_id, design["candidate"], design["production"], design["budget"],
                         design["pi_disagree"], design["pi_agree"], _json(design), utcnow()])
            self._save_label_requests(con, cycle_id, requests, purpose="evaluate")
            if next_stage:
                self._set_stage(con, cycle_id, next_stage)

    def traffic_designs(self) -> pd.DataFrame:
        return self._read("SELECT * FROM traffic_designs ORDER BY cycle_id")

    def traffic_design(self, cycle_id: int) -> dict | None:
        row = _first(self._read("SELECT * FROM traffic_designs WHERE cycle_id = ?", [cycle_id]))
        if row:
            row["detail"] = json.loads(row["detail"] or "{}")
        return row

    def traffic_labels(self) -> pd.DataFrame:
        """Probe rows people labeled to grade models (example_id, text, label, cycle_id, answered_at): never
        trained on. Skipped and withdrawn requests are not labels."""
        return self._read("SELECT example_id, text, label, cycle_id, answered_at FROM label_requests "
                          "WHERE purpose = 'evaluate' AND status = 'answered' ORDER BY answered_at, id")

    def label_requests(self, status: str | None = None, cycle_id: int | None = None) -> pd.DataFrame:
        """The labeling queue (every request when status is None), best-scored first within a cycle."""
        clause, params = _where_equal(status=status, cycle_id=cycle_id)
        return self._read(f"SELECT * FROM label_requests {clause} ORDER BY cycle_id, score DESC, id", params)

    def label_request(self, request_id: int) -> dict | None:
        row = _first(self._read("SELECT * FROM label_requests WHERE id = ?", [int(request_id)]))
        if row:
            row["suggestions"] = json.loads(row["suggestions"] or "[]")
        return row

    def answer_label_request(self, request_id: int, label: str | None, by: str, skip: bool = False) -> dict:
        """A person's label for one requested text (or a skip), once; refused whole for an unknown request or
        label or a request already answered. Audited in the same transaction."""
        with self._tx() as con:
            row = con.execute("SELECT status, cycle_id, text, label, answered_by, purpose FROM label_requests "
                              "WHERE id = ?", [int(request_id)]).fetchone()
            if row is None:
                raise KeyError(f"no label request {request_id}")
            if row[0] != "pending":
                raise StoreConflict(f"label request {request_id} was already {row[0]}"
                                    + (f" ({row[3]})" if row[3] else "") + f" by {row[4]}")
            if skip:
                label = None
            elif not label or not con.execute("SELECT 1 FROM labels WHERE name = ?", [label]).fetchone():
                names = [r[0] for r in con.execute("SELECT name FROM labels ORDER BY idx").fetchall()]
                shown = ", ".join(names[:12]) + (f", ... ({len(names)} labels)" if len(names) > 12 else "")
                raise ValueError(f"unknown label '{label}'; one of: {shown}")
            status = "skipped" if skip else "answered"
            con.execute("UPDATE label_requests SET status = ?, label = ?, answered_by = ?, answered_at = ? "
                        "WHERE id = ?", [status, label, by, utcnow(), int(request_id)])
            self._audit(con, by, "label_skipped" if skip else "label_answered", f"label_request:{request_id}",
                        {"cycle": row[1], "label": label, "purpose": row[5], "text": row[2][:200]})
            return {"id": int(request_id), "status": status, "label": label, "cycle_id": row[1], "by": by,
                    "purpose": row[5]}

    def human_labels(self, before_cycle: int | None = None) -> pd.DataFrame:
        """People's answers (id = the pool example's id, text, label, answered_by), never a held-out text;
        with before_cycle, only those answered before that cycle began: an answer counts from the next cycle."""
        where, params = "", []
        if before_cycle is not None:
            where, params = ("AND r.answered_at < (SELECT created_at FROM cycles WHERE id = ?)", [before_cycle])
        # A probe row's label grades models (purpose `evaluate`): it never counts as seed.
        return self._read(
            "SELECT r.example_id AS id, r.text, r.label, r.answered_by FROM label_requests r "
            "WHERE r.status = 'answered' AND r.purpose = 'train' "
            "AND r.text NOT IN (SELECT text FROM examples WHERE split = 'heldout') "
            "AND r.text NOT IN (SELECT x.text FROM examples x JOIN traffic_probe p ON p.example_id = x.id) "
            f"{where} ORDER BY r.answered_at, r.id", params)

    def seed_examples(self, before_cycle: int | None = None) -> pd.DataFrame:
        """What counts as labeled seed (id, text, label, source): the seed split, then people's answers to label
        requests (source `human_label`; answered before cycle `before_cycle` began, when given). A text a
        person labeled appears once, with their label."""
        seed = self.examples("seed").assign(source="seed")
        human = self.human_labels(before_cycle)
        if human.empty:
            return seed
        human = human[["id", "text", "label"]].assign(source="human_label")
        return pd.concat([seed[~seed["text"].isin(human["text"])], human], ignore_index=True)

    # -- production logs (the server's predictions and people's corrections) ------------------
    PREDICTION_COLUMNS = ["id", "at", "text", "label", "confidence", "model_version", "scaffold_version",
                          "latency_ms"]
    FEEDBACK_COLUMNS = ["prediction_id", "label", "at", "actor"]

    def log_production(self, predictions: pd.DataFrame, feedback: pd.DataFrame) -> None:
        """One batch of the server's logs in one transaction. Predictions are written once (a retried
        batch is harmless); a later correction of the same prediction replaces the earlier one."""
        with self._tx() as con:
            if len(predictions):
                _register(con, "pred_df", predictions[self.PREDICTION_COLUMNS])
                con.execute(f"INSERT OR IGNORE INTO predictions SELECT {_columns(self.PREDICTION_COLUMNS)} "
                            "FROM pred_df")
            if len(feedback):
                latest = feedback[self.FEEDBACK_COLUMNS].drop_duplicates("prediction_id", keep="last")
                _register(con, "fb_df", latest)
                con.execute(f"INSERT OR REPLACE INTO feedback SELECT {_columns(self.FEEDBACK_COLUMNS)} "
                            "FROM fb_df")
                # one entry per batch and sender: who put corrections into the store, not one per row
                for actor, group in latest.groupby("actor"):
                    self._audit(con, str(actor), "feedback_received", "feedback",
                                {"count": len(group), "prediction_ids": group["prediction_id"].head(20).tolist()})

    def known_predictions(self, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        df = self._read("SELECT id FROM predictions WHERE id IN (SELECT unnest(?))", [list(ids)])
        return set(df["id"])

    def production_texts(self) -> pd.DataFrame:
        """Logged traffic as unlabeled texts (id, text, label=None), oldest first, each text once, and never
        a text of the held-out set or one already stored as an example. Ids are negative and stable
        (a hash of the text), so they never collide with example ids."""
        return self._read(
            "SELECT -(hash(text) % 4611686018427387903)::BIGINT - 1 AS id, text, NULL::VARCHAR AS label "
            "FROM predictions WHERE text NOT IN (SELECT text FROM examples) "
            "GROUP BY text ORDER BY min(\"at\"), text")

    def unlabeled_pool(self) -> pd.DataFrame:
        """What curation may self-label: the unlabeled split less the traffic probe, then logged production
        traffic."""
        pool = self._read("SELECT id, text, label FROM examples WHERE split = 'unlabeled' "
                          "AND id NOT IN (SELECT example_id FROM traffic_probe) ORDER BY id")
        traffic = self.production_texts()
        if traffic.empty or pool.empty:
            return pool if traffic.empty else traffic
        return pd.concat([pool, traffic], ignore_index=True)

    def production_feedback(self, version: str | None = None) -> pd.DataFrame:
        """People's corrections joined to what was served: prediction_id, text, served, label (the
        corrected one), confidence, model_version, at. Feedback on held-out or traffic-probe texts is left
        out, so a correction never leaks the rows that grade a model into its training."""
        where, params = ("AND p.model_version = ?", [version]) if version else ("", [])
        return self._read(
            "SELECT f.prediction_id, p.text, p.label AS served, f.label, p.confidence, p.model_version, "
            "p.scaffold_version, f.\"at\", f.actor FROM feedback f JOIN predictions p ON p.id = f.prediction_id "
            "WHERE p.text NOT IN (SELECT text FROM examples WHERE split = 'heldout' "
            f"OR id IN (SELECT example_id FROM traffic_probe)) {where} "
            "ORDER BY f.\"at\", f.prediction_id", params)

    def production_summary(self) -> dict:
        """Traffic figures for the dashboard: requests per version, feedback, corrected errors."""
        with self._tx(read_only=True) as con:
            total, first, last = con.execute("SELECT count(*), min(\"at\"), max(\"at\") FROM predictions").fetchone()
            fb, wrong = con.execute("SELECT count(*), count(*) FILTER (WHERE p.label <> f.label) FROM feedback f "
                                    "JOIN predictions p ON p.id = f.prediction_id").fetchone()
            by_version = con.execute("SELECT model_version, scaffold_version, count(*) AS predictions, "
                                     "avg(latency_ms) AS mean_latency_ms FROM predictions "
                                     "GROUP BY ALL ORDER BY min(\"at\")").df()
            pairs = con.execute("SELECT p.label AS served, f.label AS corrected, count(*) AS n FROM feedback f "
                                "JOIN predictions p ON p.id = f.prediction_id WHERE p.label <> f.label "
                                "GROUP BY ALL ORDER BY n DESC, served, corrected").df()
        return {"predictions": int(total), "first": first, "last": last, "feedback": int(fb),
                "corrected_errors": int(wrong), "by_version": by_version, "corrected_pairs": pairs}

    # -- training metrics ---------------------------------------------------------------------
    def record_metrics(self, run_id: str, rows: list[tuple[int, str, float, float]]) -> None:
        """rows: (step, name, value, epoch). Re-recording a step after a resume replaces it."""
        if not rows:
            return
        frame = pd.DataFrame(rows, columns=["step", "name", "value", "epoch"]).assign(run_id=run_id, at=utcnow())
        with self._tx() as con:
            _register(con, "metrics_df", frame)
            con.execute("INSERT OR REPLACE INTO train_metrics SELECT run_id, step, name, value, epoch, \"at\" "
                        "FROM metrics_df")

    def record_train_event(self, run_id: str, step: int, kind: str, detail: str) -> None:
        with self._tx() as con:
            con.execute("INSERT OR REPLACE INTO train_events VALUES (?, ?, ?, ?, ?)",
                        [run_id, step, kind, detail, utcnow()])

    def metrics(self, run_id: str | None = None) -> pd.DataFrame:
        if run_id is None:
            return self._read("SELECT * FROM train_metrics ORDER BY run_id, step, name")
        return self._read("SELECT * FROM train_metrics WHERE run_id = ? ORDER BY step, name", [run_id])

    def train_events(self, run_id: str) -> pd.DataFrame:
        return self._read("SELECT * FROM train_events WHERE run_id = ? ORDER BY step", [run_id])

    # -- model versions and aliases -----------------------------------------------------------
    def next_version_num(self) -> int:
        return int(self._read("SELECT coalesce(max(num), 0) + 1 AS n FROM model_versions").iloc[0, 0])

    def register_version(self, version: str, num: int, cycle_id: int | None, parent: str | None,
                         base_model: str, path: str, files: dict, lineage: dict, actor: str,
                         next_stage: str | None = None) -> None:
        with self._tx() as con:
            con.execute("INSERT INTO model_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [version, num, utcnow(), cycle_id, parent, base_model, path, _json(files), _json(lineage)])
            self._move_alias(con, "candidate", version, actor, f"trained in cycle {cycle_id}")
            if cycle_id is not None:
                con.execute("UPDATE cycles SET candidate_version = ? WHERE id = ?", [version, cycle_id])
                if next_stage:
                    self._set_stage(con, cycle_id, next_stage)
            self._audit(con, actor, "version_registered", f"version:{version}",
                        {"cycle": cycle_id, "parent": parent, "files": files})

    def version(self, version: str) -> dict | None:
        row = _first(self._read("SELECT * FROM model_versions WHERE version = ?", [version]))
        if row:
            row["files"] = json.loads(row["files"])
            row["lineage"] = json.loads(row["lineage"])
        return row

    def versions(self) -> pd.DataFrame:
        return self._read("SELECT * FROM model_versions ORDER BY num")

    def _move_alias(self, con, name: str, version: str | None, actor: str, reason: str) -> str | None:
        row = con.execute("SELECT version FROM aliases WHERE name = ?", [name]).fetchone()
        previous = row[0] if row else None
        con.execute("INSERT OR REPLACE INTO aliases VALUES (?, ?, ?)", [name, version, utcnow()])
        hid = con.execute("SELECT coalesce(max(id), 0) + 1 FROM alias_history").fetchone()[0]
        con.execute("INSERT INTO alias_history VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [hid, name, version, previous, actor, reason, utcnow()])
        return previous

    def alias(self, name: str) -> str | None:
        if not self.path.exists():
            return None
        df = self._read("SELECT version FROM aliases WHERE name = ?", [name])
        return None if df.empty else df.iloc[0, 0]

    def aliases(self) -> pd.DataFrame:
        return self._read("SELECT * FROM aliases ORDER BY name")

    def alias_history(self) -> pd.DataFrame:
        return self._read("SELECT * FROM alias_history ORDER BY id")

    def promote(self, cycle_id: int, version: str, actor: str, reason: str) -> None:
        """Move `production` to the cycle's candidate and finish the cycle, in one transaction."""
        with self._tx() as con:
            status = con.execute("SELECT status FROM cycles WHERE id = ?", [cycle_id]).fetchone()[0]
            if status == "done":
                return
            previous = self._move_alias(con, "production", version, actor, reason)
            self._move_alias(con, "candidate", None, actor, "promoted")
            self._set_stage(con, cycle_id, "done", "done")
            self._audit(con, actor, "promoted", f"version:{version}",
                        {"cycle": cycle_id, "previous": previous, "reason": reason})
            crash_point("promote_before_commit")

    def reject_cycle(self, cycle_id: int, actor: str, reason: str) -> None:
        with self._tx() as con:
            row = con.execute("SELECT status, candidate_version FROM cycles WHERE id = ?", [cycle_id]).fetchone()
            if row[0] == "rejected":
                return
            if row[1] is not None:  # a scaffold cycle has no candidate model to clear
                self._move_alias(con, "candidate", None, actor, "rejected")
            self._set_stage(con, cycle_id, "rejected", "rejected")
            self._audit(con, actor, "candidate_rejected", f"version:{row[1]}" if row[1] else f"cycle:{cycle_id}",
                        {"cycle": cycle_id, "reason": reason})

    def rollback(self, version: str, actor: str, reason: str) -> str | None:
        with self._tx() as con:
            if not con.execute("SELECT 1 FROM model_versions WHERE version = ?", [version]).fetchone():
                raise KeyError(f"no model version '{version}'")
            previous = self._move_alias(con, "production", version, actor, reason)
            self._audit(con, actor, "rollback", f"version:{version}", {"previous": previous, "reason": reason})
            return previous

    # -- evaluation ---------------------------------------------------------------------------
    def save_evaluation(self, version: str, scored: dict[str, tuple[pd.DataFrame, float, dict]],
                        cycle_id: int | None = None, next_stage: str | None = None,
                        traffic: dict | None = None, probe: pd.DataFrame | None = None) -> None:
        """A version's evaluation on each part of the held-out set ({part: (results, accuracy, per_class)}),
        its predictions on the traffic probe (example_id, predicted, confidence) and its estimate on traffic
        (core/traffic.py), kept as split 'traffic'."""
        with self._tx() as con:
            if probe is not None:
                con.execute("DELETE FROM probe_predictions WHERE version = ?", [version])
                _register(con, "probe_df", probe[["example_id", "predicted", "confidence"]].assign(version=version))
                con.execute("INSERT INTO probe_predictions SELECT version, example_id, predicted, confidence "
                            "FROM probe_df")
                con.unregister("probe_df")
            if traffic is not None:
                con.execute("INSERT OR REPLACE INTO evaluations (version, split, accuracy, n, per_class, \"at\", "
                            "detail) VALUES (?, 'traffic', ?, ?, '{}', ?, ?)",
                            [version, traffic["accuracy"], traffic["n"], utcnow(), _json(traffic)])
            for split, (results, accuracy, per_class) in scored.items():
                con.execute("DELETE FROM eval_results WHERE version = ? AND example_id IN (SELECT unnest(?))",
                            [version, results["example_id"].tolist()])
                _register(con, "eval_df", results.assign(version=version))
                con.execute("INSERT INTO eval_results SELECT version, example_id, predicted, confidence, correct "
                            "FROM eval_df")
                con.unregister("eval_df")
                con.execute("INSERT OR REPLACE INTO evaluations (version, split, accuracy, n, per_class, \"at\") "
                            "VALUES (?, ?, ?, ?, ?, ?)", [version, split, accuracy, len(results), _json(per_class),
                                                          utcnow()])
            if cycle_id is not None and next_stage:
                self._set_stage(con, cycle_id, next_stage)

    def save_traffic_estimates(self, estimates: dict[str, dict]) -> None:
        """Every version's estimate on traffic, recomputed as traffic labels arrive ({version: estimate})."""
        with self._tx() as con:
            for version, est in estimates.items():
                con.execute("INSERT OR REPLACE INTO evaluations (version, split, accuracy, n, per_class, \"at\", "
                            "detail) VALUES (?, 'traffic', ?, ?, '{}', ?, ?)",
                            [version, est["accuracy"], est["n"], utcnow(), _json(est)])

    def probe_predictions(self, version: str | None = None) -> pd.DataFrame:
        """Versions' predictions on the traffic probe (version, example_id, predicted, confidence)."""
        clause, params = _where_equal(version=version)
        return self._read(f"SELECT * FROM probe_predictions {clause} ORDER BY version, example_id", params)

    def evaluation(self, version: str, split: str = "gate") -> dict | None:
        row = _first(self._read("SELECT * FROM evaluations WHERE version = ? AND split = ?", [version, split]))
        if row:
            row["per_class"] = json.loads(row["per_class"])
            row["detail"] = json.loads(row["detail"]) if row.get("detail") else None
        return row

    def evaluations(self) -> pd.DataFrame:
        return self._read("SELECT e.*, v.num, v.cycle_id FROM evaluations e JOIN model_versions v "
                          "USING (version) ORDER BY v.num")

    def eval_results(self, version: str, part: str | None = None) -> pd.DataFrame:
        """A version's per-row held-out results (of one part of the held-out set, when given)."""
        where, params = ("AND r.example_id IN (SELECT example_id FROM heldout_parts WHERE part = ?)", [part]) \
            if part else ("", [])
        return self._read("SELECT r.*, x.text, x.label FROM eval_results r JOIN examples x "
                          f"ON x.id = r.example_id WHERE r.version = ? {where} ORDER BY r.example_id",
                          [version, *params])

    # -- scaffolds: inference programs, their evaluations, A/B trials and adoptions -------------
    def add_scaffold(self, name: str, spec: dict, spec_sha256: str, actor: str, parent_id: str | None = None,
                     operator: str | None = None, cycle_id: int | None = None,
                     scaffold_id: str | None = None) -> tuple[str, bool]:
        """Store a scaffold once: the same steps again return the existing id. (id, whether it is new).
        The id is `s<num>` unless given (built-ins are stored under their names)."""
        with self._tx() as con:
            row = con.execute("SELECT id FROM scaffolds WHERE spec_sha256 = ?", [spec_sha256]).fetchone()
            if row:
                return row[0], False
            num = con.execute("SELECT coalesce(max(num), 0) + 1 FROM scaffolds").fetchone()[0]
            sid = scaffold_id or f"s{num}"
            con.execute("INSERT INTO scaffolds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [sid, num, name, parent_id, operator, _json(spec), spec_sha256, cycle_id, utcnow(), actor])
            self._audit(con, actor, "scaffold_added", f"scaffold:{sid}",
                        {"name": name, "parent": parent_id, "operator": operator, "cycle": cycle_id})
            return sid, True

    def scaffold(self, scaffold_id: str) -> dict | None:
        row = _first(self._read("SELECT * FROM scaffolds WHERE id = ?", [scaffold_id]))
        if row:
            row["spec"] = json.loads(row["spec"])
        return row

    def scaffolds(self) -> pd.DataFrame:
        return self._read("SELECT * FROM scaffolds ORDER BY num")

    def save_scaffold_eval(self, scaffold_id: str, model_version: str, split: str, metrics: dict) -> None:
        """metrics: n, accuracy, coverage, selective_accuracy, guardrail_pass, novelty, detail."""
        with self._tx() as con:
            con.execute("INSERT OR REPLACE INTO scaffold_evals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [scaffold_id, model_version, split, metrics["n"], metrics["accuracy"], metrics["coverage"],
                         metrics["selective_accuracy"], metrics.get("guardrail_pass"), metrics.get("novelty"),
                         _json(metrics.get("detail", {})), utcnow()])

    def scaffold_evals(self, model_version: str | None = None, split: str | None = None) -> pd.DataFrame:
        clause, params = _where_equal(model_version=model_version, split=split)
        return self._read(f"SELECT * FROM scaffold_evals {clause} ORDER BY scaffold_id", params)

    def create_scaffold_cycle(self, stage: str, model_version: str, budget: int, production_id: str,
                              candidate_id: str | None, actor: str) -> int:
        """A scaffold cycle and its trial row at once, so a crash never leaves one without the other."""
        with self._tx() as con:
            cid = self._create_cycle(con, "scaffold", stage, model_version, actor)
            con.execute("INSERT INTO scaffold_trials VALUES (?, ?, ?, ?, ?, NULL, ?, ?)",
                        [cid, model_version, budget, production_id, candidate_id, utcnow(), utcnow()])
            return cid

    def scaffold_trial(self, cycle_id: int) -> dict | None:
        row = _first(self._read("SELECT * FROM scaffold_trials WHERE cycle_id = ?", [cycle_id]))
        if row and row["result"] is not None:
            row["result"] = json.loads(row["result"])
        return row

    def scaffold_trials(self) -> pd.DataFrame:
        return self._read("SELECT t.*, c.status, c.stage FROM scaffold_trials t JOIN cycles c ON c.id = t.cycle_id "
                          "ORDER BY t.cycle_id")

    def set_trial_candidate(self, cycle_id: int, candidate_id: str, next_stage: str) -> None:
        with self._tx() as con:
            con.execute("UPDATE scaffold_trials SET candidate_id = ?, updated_at = ? WHERE cycle_id = ?",
                        [candidate_id, utcnow(), cycle_id])
            self._set_stage(con, cycle_id, next_stage)

    def save_trial_result(self, cycle_id: int, result: dict, next_stage: str) -> None:
        with self._tx() as con:
            con.execute("UPDATE scaffold_trials SET result = ?, updated_at = ? WHERE cycle_id = ?",
                        [_json(result), utcnow(), cycle_id])
            self._set_stage(con, cycle_id, next_stage)

    def adopt_scaffold(self, scaffold_id: str, actor: str, reason: str, cycle_id: int | None = None) -> str | None:
        """Make a scaffold the production one (and finish its cycle) in one transaction; returns the previous."""
        with self._tx() as con:
            if cycle_id is not None:
                status = con.execute("SELECT status FROM cycles WHERE id = ?", [cycle_id]).fetchone()[0]
                if status == "done":
                    return None
            if not con.execute("SELECT 1 FROM scaffolds WHERE id = ?", [scaffold_id]).fetchone():
                raise KeyError(f"no scaffold '{scaffold_id}'")
            row = con.execute("SELECT scaffold_id FROM scaffold_adoptions ORDER BY id DESC LIMIT 1").fetchone()
            previous = row[0] if row else None
            aid = con.execute("SELECT coalesce(max(id), 0) + 1 FROM scaffold_adoptions").fetchone()[0]
            con.execute("INSERT INTO scaffold_adoptions VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [aid, scaffold_id, previous, cycle_id, actor, reason, utcnow()])
            if cycle_id is not None:
                self._set_stage(con, cycle_id, "done", "done")
            self._audit(con, actor, "scaffold_adopted", f"scaffold:{scaffold_id}",
                        {"previous": previous, "cycle": cycle_id, "reason": reason})
            return previous

    def production_scaffold(self) -> str | None:
        if not self.path.exists():
            return None
        df = self._read("SELECT scaffold_id FROM scaffold_adoptions ORDER BY id DESC LIMIT 1")
        return None if df.empty else df.iloc[0, 0]

    def scaffold_adoptions(self) -> pd.DataFrame:
        return self._read("SELECT * FROM scaffold_adoptions ORDER BY id")

    # -- gates --------------------------------------------------------------------------------
    def open_gate(self, cycle_id: int, kind: str, policy: str, checks: dict, deadline: datetime) -> int:
        """Open the cycle's gate of this kind, or return the one already open (idempotent)."""
        with self._tx() as con:
            row = con.execute("SELECT id FROM gates WHERE cycle_id = ? AND kind = ?", [cycle_id, kind]).fetchone()
            if row:
                return row[0]
            gid = con.execute("SELECT coalesce(max(id), 0) + 1 FROM gates").fetchone()[0]
            con.execute("INSERT INTO gates VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, NULL, NULL, NULL, NULL, FALSE)",
                        [gid, cycle_id, kind, policy, _json(checks), utcnow(), deadline])
            self._audit(con, "engine", "gate_opened", f"gate:{gid}", {"cycle": cycle_id, "kind": kind,
                                                                     "policy": policy})
            return gid

    def decide_gate(self, gate_id: int, approved: bool, by: str, comment: str, automatic: bool,
                    override: bool = False) -> dict:
        """Decide a pending gate once. Past its deadline nobody can: the gate is rejected as expired instead
        (and that is committed) before the late decision is refused."""
        with self._tx() as con:
            row = con.execute("SELECT status, cycle_id, kind, deadline FROM gates WHERE id = ?", [gate_id]).fetchone()
            if row is None:
                raise KeyError(f"no gate {gate_id}")
            if row[0] != "pending":
                raise StoreConflict(f"gate {gate_id} was already decided ({row[0]})")
            expired = row[3] is not None and utcnow() > row[3]
            if expired:
                approved, by, comment, automatic, override = False, "auto", EXPIRED, True, False
            status = "approved" if approved else "rejected"
            con.execute("UPDATE gates SET status = ?, decided_at = ?, decided_by = ?, comment = ?, automatic = ?, "
                        "override = ? WHERE id = ?", [status, utcnow(), by, comment, automatic, override, gate_id])
            self._audit(con, by, "gate_overridden" if override else f"gate_{status}", f"gate:{gate_id}",
                        {"cycle": row[1], "kind": row[2], "comment": comment, "automatic": automatic,
                         "override": override})
        if expired:
            raise StoreConflict(f"gate {gate_id} expired at {row[3]:%Y-%m-%d %H:%M:%S} UTC and was rejected; "
                                "a decision after the deadline does not count")
        return {"id": gate_id, "status": status, "cycle_id": row[1], "kind": row[2], "override": override}

    def expire_gate(self, gate_id: int) -> bool:
        """Reject a pending gate past its deadline; whether it did."""
        try:
            self.decide_gate(gate_id, False, "auto", EXPIRED, True)
        except StoreConflict as err:
            return "expired" in str(err)
        return False

    def set_cycle_waiting(self, cycle_id: int, waiting: bool) -> None:
        with self._tx() as con:
            stage = con.execute("SELECT stage FROM cycles WHERE id = ?", [cycle_id]).fetchone()[0]
            self._set_stage(con, cycle_id, stage, "waiting" if waiting else "running")

    def gate(self, gate_id: int) -> dict | None:
        row = _first(self._read("SELECT * FROM gates WHERE id = ?", [gate_id]))
        if row:
            row["checks"] = json.loads(row["checks"])
        return row

    def gate_for(self, cycle_id: int, kind: str) -> dict | None:
        df = self._read("SELECT id FROM gates WHERE cycle_id = ? AND kind = ?", [cycle_id, kind])
        return None if df.empty else self.gate(int(df.iloc[0, 0]))

    def gates(self, status: str | None = None) -> pd.DataFrame:
        if status:
            return self._read("SELECT * FROM gates WHERE status = ? ORDER BY id", [status])
        return self._read("SELECT * FROM gates ORDER BY id")


def _register(con, name: str, frame: pd.DataFrame) -> None:
    # DuckDB 2 refuses register() while an earlier result is partly fetched; bulk rows go in as frames.
    con.complete()
    con.register(name, frame)


def _columns(names: list[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)  # quoted: "at" is a keyword


def _first(df: pd.DataFrame) -> dict | None:
    if df.empty:
        return None
    row = df.iloc[0].to_dict()
    return {k: (None if _isna(v) else v) for k, v in row.items()}


def _isna(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False
