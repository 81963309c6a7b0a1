"""The models page: versions, aliases and their history, rollback targets, the lineage graph, version detail."""
from __future__ import annotations

import json

import pandas as pd

from app import tables
from app.queries.shared import _cached, _store
from core import stats


@_cached
def aliases(ws: str) -> pd.DataFrame:
    frame = _store(ws).aliases()
    return frame.astype({"version": object}).where(frame.notna(), None)  # a cleared alias reads None, not NaN


@_cached
def alias_history(ws: str) -> pd.DataFrame:
    return _store(ws).alias_history()


@_cached
def rollback_targets(ws: str) -> list[str]:
    """Versions production may roll back to: those it pointed at before, oldest first, not the current one."""
    from core import actions  # imports torch (through the registry): only the Models page pays for it

    return actions.rollback_targets(_store(ws))


@_cached
def versions(ws: str) -> pd.DataFrame:
    """One row per version with its lineage spread into columns and its held-out accuracy."""
    store = _store(ws)
    frame = store.versions()
    columns = ["version", "num", "created_at", "cycle_id", "parent_version", "train_rows", "rows_by_source",
               "best_val_acc", "steps", "gate_accuracy", "base_model"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    lineage = frame["lineage"].map(json.loads)
    frame = frame.assign(
        train_rows=lineage.map(lambda d: d.get("train_rows")),
        rows_by_source=lineage.map(lambda d: json.dumps(d.get("rows_by_source", {}), sort_keys=True)),
        best_val_acc=lineage.map(lambda d: d.get("best_val_acc")),
        steps=lineage.map(lambda d: d.get("steps")))
    shown = stats.shown_estimates(store.evaluations())
    frame["gate_accuracy"] = frame["version"].map(lambda v: shown.get(v, {}).get("accuracy"))
    return frame[columns]


# -- lineage and version detail ---------------------------------------------------------------------------------
def _gate_words(gate: dict) -> str:
    """One gate as a person says it: 'promotion gate 3: approved by alice (2026-11-27 01:30:28 UTC)'."""
    name = tables.gate_name(gate["kind"])
    words = f"{name} gate {int(gate['id'])}: {gate['status']}"
    if gate["status"] == "pending":
        return words + f" (policy {gate['policy']})"
    if not tables.is_empty(gate.get("decided_by")):
        words += f" by {gate['decided_by']}"
    if gate.get("override") is True:
        words += " overriding failed checks"
    if not tables.is_empty(gate.get("decided_at")):
        words += f" ({tables.when(gate['decided_at'])} UTC)"
    return words


@_cached
def lineage(ws: str) -> pd.DataFrame:
    """One row per version, oldest first, for the lineage graph: its parent, the cycle that trained it (kind,
    status) and that cycle's gates in words, the aliases on it now, whether it was ever production, and its
    gate estimate with the number of rows behind it."""
    store = _store(ws)
    columns = ["version", "num", "created_at", "parent_version", "cycle_id", "cycle_kind", "cycle_status", "gates",
               "aliases", "was_production", "gate_accuracy", "gate_n", "gate_basis"]
    frame = store.versions()
    if frame.empty:
        return pd.DataFrame(columns=columns)
    cycles_by_id = store.cycles().set_index("id")
    gates = store.gates()
    on_version: dict[str, list[str]] = {}
    for row in store.aliases().itertuples():
        if isinstance(row.version, str):
            on_version.setdefault(row.version, []).append(row.name)
    history = store.alias_history()
    ever_production = set(history.loc[history["name"] == "production", "version"].dropna())
    shown = stats.shown_estimates(store.evaluations())
    rows = []
    for v in frame.itertuples():
        cid = None if pd.isna(v.cycle_id) else int(v.cycle_id)
        cyc = cycles_by_id.loc[cid] if cid is not None and cid in cycles_by_id.index else None
        its_gates = gates[gates["cycle_id"] == cid].to_dict("records") if cid is not None else []
        rows.append({
            "version": v.version, "num": int(v.num), "created_at": v.created_at,
            "parent_version": v.parent_version if isinstance(v.parent_version, str) else None,
            "cycle_id": cid, "cycle_kind": None if cyc is None else cyc["kind"],
            "cycle_status": None if cyc is None else cyc["status"],
            "gates": [_gate_words(g) for g in its_gates],
            "aliases": sorted(on_version.get(v.version, [])),
            "was_production": v.version in ever_production,
            "gate_accuracy": shown.get(v.version, {}).get("accuracy"),
            "gate_n": shown.get(v.version, {}).get("n"), "gate_basis": shown.get(v.version, {}).get("basis")})
    return pd.DataFrame(rows, columns=columns)


@_cached
def version_detail(ws: str, version: str) -> dict | None:
    """What one version was made of and how it did: its lineage (training rows by source, steps, LoRA layers),
    per-class results on the gate rows (worst recall first), and the drift report of the cycle that trained
    it (None for a baseline, which had nothing to compare with)."""
    store = _store(ws)
    row = store.version(version)
    if row is None:
        return None
    evaluation_ = store.evaluation(version)
    per_class = pd.DataFrame(
        [{"label": label, **values} for label, values in ((evaluation_ or {}).get("per_class") or {}).items()],
        columns=["label", "recall", "precision", "support"])
    per_class = per_class.sort_values(["recall", "label"], na_position="last").reset_index(drop=True)
    cycle_id = row["cycle_id"]
    drift = store.drift_report(int(cycle_id)) if cycle_id is not None and not pd.isna(cycle_id) else None
    return {"version": version, "cycle_id": cycle_id, "parent": row["parent_version"], "lineage": row["lineage"],
            "rows_by_source": dict(row["lineage"].get("rows_by_source") or {}), "per_class": per_class,
            "accuracy": (evaluation_ or {}).get("accuracy"), "n": (evaluation_ or {}).get("n"),
            "drift": drift}
