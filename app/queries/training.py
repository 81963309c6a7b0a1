"""The training page: each run's metric curves, the training doctor's events, and what a run replayed."""
from __future__ import annotations

import json

import pandas as pd

from app.queries.shared import _cached, _store


def _run_order(run_id: str) -> tuple[int, str]:
    tail = run_id.rsplit("_", 1)[-1]
    return (int(tail), run_id) if tail.isdigit() else (-1, run_id)


@_cached
def train_runs(ws: str) -> list[str]:
    """Run ids with recorded metrics (cycle_1, cycle_2, ...), oldest first, and the live run before its first metric."""
    runs = set(_store(ws).metrics()["run_id"].unique())
    runs.update([live_run(ws)] if live_run(ws) else [])
    return sorted(runs, key=_run_order)


@_cached
def live_run(ws: str) -> str | None:
    """The run id being trained right now: the newest cycle is open and at stage train."""
    frame = _store(ws).cycles()
    if frame.empty:
        return None
    newest = frame.iloc[-1]
    if newest["stage"] == "train" and newest["status"] == "running":
        return f"cycle_{int(newest['id'])}"
    return None


@_cached
def metric_curves(ws: str, run_id: str) -> pd.DataFrame:
    """One row per step: train_loss, val_loss, val_acc (NaN where a step did not record one)."""
    long = _store(ws).metrics(run_id)
    if long.empty:
        return pd.DataFrame(columns=["step", "train_loss", "val_loss", "val_acc"])
    wide = long.pivot_table(index="step", columns="name", values="value", aggfunc="last").reset_index()
    for name in ("train_loss", "val_loss", "val_acc"):
        if name not in wide:
            wide[name] = float("nan")
    return wide


@_cached
def train_events(ws: str, run_id: str) -> pd.DataFrame:
    return _store(ws).train_events(run_id)


@_cached
def replayed(ws: str, run_id: str) -> str | None:
    """One line on what the run trained on from earlier cycles (its version's lineage, core.cycle.replay_summary);
    None before the run registered its version, for a baseline, and for a version trained before replay existed."""
    versions = _store(ws).versions()
    lineages = [json.loads(raw or "{}") for raw in versions["lineage"]]
    record = next((d.get("replayed") for d in reversed(lineages) if d.get("run_id") == run_id), None)
    if record is None:
        return None
    if not record.get("enabled"):
        return "Samples kept in earlier cycles were not replayed in this run (`train.accumulate` was off)."
    if not record["rows"]:
        return "No sample kept in an earlier cycle was replayed: the run held every one already, or there were none."
    cycles = ", ".join(f"cycle {c}: {n:,}" for c, n in record["by_cycle"].items())
    return (f"Replayed {record['rows']:,} samples kept in earlier cycles ({cycles}), each weighing "
            f"{record['weight']:g} of its own label weight.")
