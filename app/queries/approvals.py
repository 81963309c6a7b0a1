"""The approvals page: decided gates, approvers, and the evidence a pending gate shows (recall, drift, A/B)."""
from __future__ import annotations

import pandas as pd

from app.queries.shared import _cached, _store, labels


@_cached
def decided_gates(ws: str) -> pd.DataFrame:
    """Newest first; an approval that overrode failed checks says so in its status."""
    frame = _store(ws).gates()
    frame = frame[frame["status"] != "pending"].copy()
    overridden = frame["override"].eq(True)  # NULL for gates decided before overrides existed
    frame.loc[overridden, "status"] = frame.loc[overridden, "status"] + " (override: checks had failed)"
    return frame[["id", "cycle_id", "kind", "status", "policy", "decided_by", "decided_at", "automatic",
                  "comment"]].sort_values("id", ascending=False).reset_index(drop=True)


@_cached
def approvers(ws: str) -> list[str]:
    users = _store(ws).users()
    return users.loc[users["role"] == "approver", "name"].tolist()


@_cached
def recall_comparison(ws: str, candidate: str | None, production: str | None) -> pd.DataFrame:
    """Per-class recall of production (before) and candidate (after), worst change first."""
    store = _store(ws)
    before = (store.evaluation(production) or {}).get("per_class", {}) if production else {}
    after = (store.evaluation(candidate) or {}).get("per_class", {}) if candidate else {}
    rows = []
    for label in labels(ws):
        b, a = before.get(label, {}), after.get(label, {})
        rows.append({"label": label, "support": a.get("support", b.get("support")),
                     "production_recall": b.get("recall"), "candidate_recall": a.get("recall")})
    frame = pd.DataFrame(rows, columns=["label", "support", "production_recall", "candidate_recall"])
    frame["change"] = frame["candidate_recall"].astype(float) - frame["production_recall"].astype(float)
    return frame.sort_values("change", na_position="last").reset_index(drop=True)


@_cached
def drift_report(ws: str, cycle_id: int) -> dict | None:
    row = _store(ws).drift_report(int(cycle_id))
    return row["report"] if row else None


@_cached
def scaffold_trial(ws: str, cycle_id: int) -> dict | None:
    return _store(ws).scaffold_trial(int(cycle_id))
