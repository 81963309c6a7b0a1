"""What every page reads through: which workspace, the cache, the store, and the reads several pages make.

Each call opens the store, reads and closes (the Store retries while the engine holds the file), so the
dashboard never blocks the engine for longer than one read. Results are cached for TTL_S seconds per workspace;
`clear()` drops them after an action.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pandas as pd
import streamlit as st

from core import stats
from core.store import Store
from core.workspace import Workspace, open_workspace


TTL_S = 2.0
ENV_VAR = "EVOLAB_WORKSPACE"


# -- which workspace ------------------------------------------------------------------------------
def workspace_from_args(argv: list[str] | None = None) -> str | None:
    """`streamlit run app/main.py -- --workspace W` first, then the EVOLAB_WORKSPACE variable."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--workspace")
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return known.workspace or os.environ.get(ENV_VAR) or None


def workspace_path() -> str:
    """The workspace app/main.py chose for this session (a page run on its own falls back to the arguments)."""
    path = st.session_state.get("workspace") or workspace_from_args()
    if not path:
        st.error(f"No workspace given: `streamlit run app/main.py -- --workspace W` or set {ENV_VAR}.")
        st.stop()
    return path


def workspace(ws: str) -> Workspace:
    """The workspace to act on (decide, roll back) through core; reads go through the functions below."""
    return open_workspace(ws)


def _store(ws: str):
    return Workspace(Path(ws)).store


def clear() -> None:
    """After an action (a decision, a rollback) the next read must see it."""
    st.cache_data.clear()


def _cached(fn):
    return st.cache_data(ttl=TTL_S, show_spinner=False)(fn)


# -- reads more than one page makes ------------------------------------------------------------------
@_cached
def alias(ws: str, name: str) -> str | None:
    return _store(ws).alias(name)


@_cached
def labels(ws: str) -> list[str]:
    return _store(ws).labels()


@_cached
def cycles(ws: str) -> pd.DataFrame:
    return _store(ws).cycles()


@_cached
def cycle(ws: str, cycle_id: int) -> dict | None:
    return _store(ws).cycle(int(cycle_id))


@_cached
def evaluations(ws: str) -> pd.DataFrame:
    """Every evaluated version's shown estimate (stats.shown_estimates: on traffic where the workspace has
    a probe, else on the untouched gate rows) with its 95% interval and basis, oldest first."""
    frame = _store(ws).evaluations()
    shown = stats.shown_estimates(frame)
    frame = frame[frame["split"] == "gate"].reset_index(drop=True)
    for key in ("accuracy", "ci_low", "ci_high", "n", "basis"):
        frame[key] = [shown.get(v, {}).get(key) for v in frame["version"]]
    return frame


@_cached
def evaluation(ws: str, version: str) -> dict | None:
    return _store(ws).evaluation(version)


@_cached
def yield_report(ws: str, cycle_id: int) -> dict | None:
    """The curate stage's report of a cycle: generated/kept per generator, asked vs produced, the difficulty mix."""
    runs = _store(ws).stage_runs(int(cycle_id))
    runs = runs[runs["stage"] == "curate"]
    if runs.empty:
        return None
    detail = json.loads(runs["detail"].iloc[0] or "{}")
    return detail if "per_generator" in detail else None


@_cached
def pending_gates(ws: str) -> list[dict]:
    """Each pending gate with its parsed checks and its cycle's candidate and production versions."""
    store = _store(ws)
    out = []
    for gate_id in store.gates("pending")["id"]:
        gate = store.gate(int(gate_id))
        if gate is None or gate["status"] != "pending":  # decided between the two reads
            continue
        cyc = store.cycle(int(gate["cycle_id"])) or {}
        gate["candidate"] = cyc.get("candidate_version")
        gate["production"] = cyc.get("parent_version")
        out.append(gate)
    return out


# -- the sidebar badge on every page ------------------------------------------------------------------
BUSY_PATIENCE_S = 3.0  # the overview and the sidebar badge say "updating…" rather than wait for the engine


def _quick_store(ws: str) -> Store:
    return Store(Workspace(Path(ws)).db, patience_s=BUSY_PATIENCE_S)


@_cached
def pending_counts(ws: str) -> dict[str, int]:
    """For the sidebar badge on every page: gates waiting for a decision, texts waiting for a label."""
    return _quick_store(ws).pending_counts()
