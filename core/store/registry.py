"""Model versions: their training metrics, the registry and its aliases (promote, reject, rollback), and
their evaluations."""
from __future__ import annotations

import json

import pandas as pd

from core.faults import crash_point
from core.store.base import _first, _json, _register, _where_equal, utcnow


class RegistryMixin:
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

    def promote(self, cycle_id: int, version: str, actor: str, reason: str, next_stage: str = "done") -> None:
        """Move `production` to the cycle's candidate and move the cycle on (to `done`, or to the stages that
        follow a promotion), in one transaction."""
        with self._tx() as con:
            status, stage = con.execute("SELECT status, stage FROM cycles WHERE id = ?", [cycle_id]).fetchone()
            if status == "done" or (status == "running" and stage == next_stage):  # promoted already
                return
            previous = self._move_alias(con, "production", version, actor, reason)
            self._move_alias(con, "candidate", None, actor, "promoted")
            self._set_stage(con, cycle_id, next_stage, "done" if next_stage == "done" else "running")
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

    def eval_results(self, version: str | None = None, part: str | None = None) -> pd.DataFrame:
        """A version's per-row held-out results (of one part of the held-out set, when given); every version's
        with version None (ordered by version, then row)."""
        conds, params = [], []
        if version is not None:
            conds.append("r.version = ?")
            params.append(version)
        if part:
            conds.append("r.example_id IN (SELECT example_id FROM heldout_parts WHERE part = ?)")
            params.append(part)
        where = "WHERE " + " AND ".join(conds) if conds else ""
        return self._read("SELECT r.*, x.text, x.label FROM eval_results r JOIN examples x "
                          f"ON x.id = r.example_id {where} ORDER BY r.version, r.example_id", params)
