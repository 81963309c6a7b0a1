"""Cycles and their stages, the dashboard's overview of them, and each cycle's diagnosis."""
from __future__ import annotations

import json
from datetime import datetime

import pandas as pd

from core.store.base import StoreBusy, StoreConflict, _first, _json, _register, utcnow

# How a cycle can end: promoted or adopted, a gate said no, a stage kept failing, a person closed it.
END_STATUSES = ("done", "rejected", "failed", "abandoned")


class CyclesMixin:
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

    def note_progress(self, cycle_id: int, at_stage: str, text: str) -> None:
        """Where the cycle's current stage stands (its own words); a cycle that moved on or closed keeps its note
        but shows it no longer (the Overview shows a note only of the stage the cycle is at). A note is worth
        less than the work it describes: when another process holds the file past a short wait, it is skipped."""
        try:
            with type(self)(self.path, patience_s=2.0)._tx() as con:
                con.execute("UPDATE cycles SET progress_stage = ?, progress = ?, progress_at = ? "
                            "WHERE id = ? AND stage = ? AND status = 'running'",
                            [at_stage, text[:300], utcnow(), cycle_id, at_stage])
        except StoreBusy:
            pass

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
        estimate (accuracy, n) of its candidate and of the production it started from; `last_stage_end`; the
        last progress note (`progress_stage`, `progress`, `progress_at`); and `last_progress`, the newest time
        the store saw it move (stage change, stage start or end, a training metric, a stage's error, a progress
        note)."""
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
                   c.tries, c.created_at, c.updated_at, c.finished_at, r.stages, c.progress_stage, c.progress,
                   c.progress_at,
                   coalesce(s.generated, 0) AS generated, coalesce(s.kept, 0) AS kept,
                   f.finding_kind, f.finding_subject, f.finding_action,
                   g.gate_id, g.gate_kind, g.gate_status, g.decided_by, g.decided_at, g.automatic, g.override,
                   g.gate_comment, g.gate_deadline, g.gate_gain, g.gate_reasons,
                   ce.accuracy AS candidate_accuracy, ce.n AS candidate_n,
                   pe.accuracy AS production_accuracy, pe.n AS production_n,
                   ct.detail AS candidate_traffic, pt.detail AS production_traffic, r.last_stage_end,
                   greatest(c.updated_at, r.last_stage_start, r.last_stage_end, m.last_metric,
                            c.progress_at) AS last_progress
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
