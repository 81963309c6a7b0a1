"""Scaffolds: inference programs, their evaluations, A/B trials and adoptions."""
from __future__ import annotations

import json

import pandas as pd

from core.store.base import _first, _json, _where_equal, utcnow
from core.store.cycles import END_STATUSES


class ScaffoldsMixin:
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

    def save_scaffold_retest(self, cycle_id: int, model_version: str, production_id: str, result: dict,
                             next_stage: str) -> None:
        """A promotion's re-test of the production scaffold, and the cycle's move on, in one transaction."""
        with self._tx() as con:
            con.execute("INSERT OR REPLACE INTO scaffold_retests VALUES (?, ?, ?, ?, ?)",
                        [cycle_id, model_version, production_id, _json(result), utcnow()])
            self._set_stage(con, cycle_id, next_stage, next_stage if next_stage in END_STATUSES else "running")

    def scaffold_retests(self) -> pd.DataFrame:
        """Every re-test after a promotion, oldest first (result as JSON text)."""
        return self._read("SELECT * FROM scaffold_retests ORDER BY cycle_id")

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
