"""Gates (a decision on a cycle, by a person or a policy, before a deadline) and the checks they read:
guardrail probes and drift reports."""
from __future__ import annotations

import json
from datetime import datetime

import pandas as pd

from core.store.base import StoreConflict, _first, _json, _register, utcnow

EXPIRED = "timed out without a decision"


class GatesMixin:
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
