"""Every read the dashboard makes: short-lived, cached for a moment, shaped for the pages.

Pages hold layout only; they read through these functions and act through `core`. Each call opens the
store, reads and closes (the Store retries while the engine holds the file), so the dashboard never
blocks the engine for longer than one read. Results are cached for TTL_S seconds per workspace, which
keeps reruns cheap and the figures at most a couple of seconds old; `clear()` drops them after an action.
Every function copes with an empty workspace: no cycles, no versions, no samples.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pandas as pd
import streamlit as st

from app import tables
from core import audit, stats
from core.store import Store, utcnow
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


# -- overview, cycles, versions -----------------------------------------------------------------------
@_cached
def alias(ws: str, name: str) -> str | None:
    return _store(ws).alias(name)


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


# -- the overview: every cycle's story and what waits for a person, in a few reads ---------------------
BUSY_PATIENCE_S = 3.0  # the overview and the sidebar badge say "updating…" rather than wait for the engine
STUCK_AFTER_S = 30 * 60  # an open, running cycle the store has seen no progress of for this long is stuck
LIVE_REFRESH_S = 5


def _quick_store(ws: str) -> Store:
    return Store(Workspace(Path(ws)).db, patience_s=BUSY_PATIENCE_S)


@_cached
def pending_counts(ws: str) -> dict[str, int]:
    """For the sidebar badge on every page: gates waiting for a decision, texts waiting for a label."""
    return _quick_store(ws).pending_counts()


@_cached
def overview(ws: str) -> dict:
    """Everything the overview shows, in four reads (raises StoreBusy after BUSY_PATIENCE_S): `timeline` (one
    row per cycle, newest first, with the columns `story` adds), `attention` (what waits for a person: pending
    gates, label requests, samples to review, a failed or stuck cycle), `traffic` (Store.production_summary),
    the `production` and `candidate` versions, and `read_at` (when it was read, UTC)."""
    store = _quick_store(ws)
    timeline = story(store.cycle_timeline())
    attention = store.attention()
    names = store.aliases().set_index("name")["version"]
    traffic = store.production_summary()
    now = utcnow()
    attention.update(problems(timeline, now))
    from core import traffic as traffic_rows

    return {"timeline": timeline, "attention": attention, "traffic": traffic, "read_at": now,
            "production": _version(names.get("production")), "candidate": _version(names.get("candidate")),
            "resemblance": traffic_rows.latest_resemblance(store)}


def _version(value) -> str | None:
    return None if value is None or pd.isna(value) else str(value)


def _points(value: float) -> str:
    return f"{100 * value:+.2f} pts"


def _estimate_text(est: dict | None) -> str | None:
    if not est:
        return None
    basis = "on traffic" if est.get("basis") == "traffic" else f"{est['n']} gate rows"
    return (f"{100 * est['accuracy']:.1f}% (95% CI {100 * est['ci_low']:.1f}–{100 * est['ci_high']:.1f}%, "
            f"{basis})")


def _stages_text(row: dict) -> str | None:
    stages = [] if row["stages"] is None else list(row["stages"])  # a cycle with no stage run yet has none
    parts = [f"{s['stage'].replace('_', ' ')} {tables.duration(s['seconds'])}" for s in stages]
    if row["status"] in ("running", "waiting") and row["stage"] not in [s["stage"] for s in stages]:
        parts.append(f"{row['stage'].replace('_', ' ')} ({'now' if row['status'] == 'running' else 'waiting'})")
    return " · ".join(parts) or None


def _reasons(value) -> list[str]:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return []
    parsed = json.loads(value) if isinstance(value, str) else value
    return [str(r) for r in parsed] if isinstance(parsed, list) else [str(parsed)]


def _outcome(row: dict) -> tuple[str, str | None]:
    """What became of the cycle, for a person, and why (the reason of a rejection, a failure, a wait)."""
    status, gate = row["status"], tables.gate_name(row["gate_kind"])
    if status == "done":
        return ("✓ promoted" if row["kind"] != "scaffold" else "✓ adopted"), (row["gate_comment"] or None)
    if status == "rejected":
        why = row["gate_comment"] if row["gate_status"] == "rejected" else None
        return "✗ rejected", why or row["error"] or "; ".join(_reasons(row["gate_reasons"])) or None
    if status == "failed":
        return "⚠ failed", row["error"]
    if status == "abandoned":
        return "⊘ abandoned", row["error"]
    if status == "waiting" and row["gate_status"] == "pending":
        return f"◷ waiting at {gate} gate {int(row['gate_id'])}", "; ".join(_reasons(row["gate_reasons"])) or None
    if status == "waiting" and row["stage"] == "traffic_labels":
        return "◷ waiting for traffic labels", "people label the probe rows where candidate and production disagree"
    return f"▸ running: {row['stage'].replace('_', ' ')}", row["error"]


def _decided_by(row: dict) -> str | None:
    from core.gates import AUTO_ACTOR, AUTO_APPROVE_ACTOR

    if row["gate_status"] == "pending":
        return "waiting for a person"
    who = row["decided_by"]
    if who is None or (isinstance(who, float) and pd.isna(who)):
        return None
    if who == AUTO_ACTOR:
        return "automatic (the gate's policy)"
    if who == AUTO_APPROVE_ACTOR:
        return "auto-approve (--auto-approve)"
    text = str(who)
    if _yes(row["override"]):
        text += " (override of failed checks)"
    elif _yes(row["automatic"]):
        text += " (automatic)"
    return text


def _yes(value) -> bool:
    return value is not None and not pd.isna(value) and bool(value)


def _net_gain(row: dict, candidate: dict | None, production: dict | None) -> str | None:
    if row["kind"] == "baseline" and row["status"] == "done":
        return "baseline"
    gain = row["gate_gain"]  # paired on the gate rows: the gate's own figure, steadier than two estimates' difference
    if (gain is None or pd.isna(gain)) and candidate and production:
        gain = candidate["accuracy"] - production["accuracy"]
    if gain is None or pd.isna(gain):
        return None
    if row["status"] == "done":
        return _points(gain)
    if row["status"] in ("running", "waiting"):
        return f"{_points(gain)} if promoted"
    return f"0 (not shipped; candidate {_points(gain)})"


def story(frame: pd.DataFrame) -> pd.DataFrame:
    """Store.cycle_timeline's rows with the columns a person reads: outcome and why, stages with their
    durations, first finding, samples generated → kept, candidate and production estimates with their 95%
    intervals (cand_*/prod_* hold the numbers, for the chart), who decided and the net gain."""
    extra = ["outcome", "why", "stages_text", "finding", "samples_text", "candidate_text", "production_text",
             "decided", "net_gain", "cand_acc", "cand_low", "cand_high", "prod_acc"]
    if frame.empty:
        return frame.assign(**{c: pd.Series(dtype=object) for c in extra})
    rows = []
    for row in frame.astype(object).where(frame.notna(), None).to_dict("records"):
        cand = stats.shown_estimate(row["candidate_accuracy"], row["candidate_n"], row.get("candidate_traffic"))
        prod = stats.shown_estimate(row["production_accuracy"], row["production_n"], row.get("production_traffic"))
        outcome, why = _outcome(row)
        finding = (f"{str(row['finding_kind']).replace('_', ' ')}: {row['finding_subject']}"
                   if row["finding_subject"] else None)
        samples = f"{int(row['generated']):,} → {int(row['kept']):,} kept" if row["generated"] else None
        rows.append({"outcome": outcome, "why": why, "stages_text": _stages_text(row), "finding": finding,
                     "samples_text": samples, "candidate_text": _estimate_text(cand),
                     "production_text": _estimate_text(prod), "decided": _decided_by(row),
                     "net_gain": _net_gain(row, cand, prod),
                     "cand_acc": cand["accuracy"] if cand else None, "cand_low": cand["ci_low"] if cand else None,
                     "cand_high": cand["ci_high"] if cand else None, "prod_acc": prod["accuracy"] if prod else None})
    return pd.concat([frame.reset_index(drop=True), pd.DataFrame(rows, columns=extra)], axis=1)


def problems(timeline: pd.DataFrame, now) -> dict:
    """A failed cycle (the newest cycle, when it failed: an older failure was followed by newer cycles) and the
    open running cycles that look stuck: the store has recorded no progress of theirs (stage change, stage
    start or end, training metric) for STUCK_AFTER_S, or their current stage's last try raised (the engine
    stopped, or retries it). Whether an engine process is alive is not in the store, so it is not guessed."""
    failed, stuck = None, []
    if not timeline.empty:
        newest = timeline.iloc[0]
        if newest["status"] == "failed":
            failed = {"cycle_id": int(newest["cycle_id"]), "stage": newest["stage"], "error": newest["error"],
                      "at": newest["finished_at"]}
        for row in timeline[timeline["status"] == "running"].to_dict("records"):
            idle = None if tables.is_empty(row["last_progress"]) else \
                (now - pd.Timestamp(row["last_progress"]).to_pydatetime()).total_seconds()
            # a stage that moves on never clears the error of an earlier try, but its end is recorded after
            # the move: the error is the current stage's when it was noted after the last stage ended
            ended = row["last_stage_end"]
            raised = not tables.is_empty(row["error"]) and (tables.is_empty(ended) or
                                                     pd.Timestamp(row["updated_at"]) > pd.Timestamp(ended))
            if raised or (idle is not None and idle > STUCK_AFTER_S):
                stuck.append({"cycle_id": int(row["cycle_id"]), "stage": row["stage"], "idle_s": idle,
                              "error": row["error"] if raised else None})
    return {"failed": failed, "stuck": stuck}


def cycle_running(ws: str) -> bool:
    """Whether a cycle is running now (the overview refreshes itself while one is)."""
    timeline = overview(ws)["timeline"]
    return bool((timeline["status"] == "running").any()) if len(timeline) else False


# -- training -------------------------------------------------------------------------------------------
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


# -- diagnosis ----------------------------------------------------------------------------------------------
@_cached
def diagnoses(ws: str, cycle_id: int) -> pd.DataFrame:
    return _store(ws).diagnoses(int(cycle_id))


@_cached
def confusion(ws: str, version: str) -> pd.DataFrame:
    """Held-out counts: rows are true labels, columns predicted labels, every label on both axes."""
    results = _store(ws).eval_results(version)
    names = labels(ws)
    if results.empty:
        return pd.DataFrame(0, index=names, columns=names)
    table = pd.crosstab(results["label"], results["predicted"])
    return table.reindex(index=names, columns=names, fill_value=0)


# -- production traffic (the server's logs) ------------------------------------------------------------------
@_cached
def production_traffic(ws: str) -> dict:
    """Requests per served version, feedback and the errors people corrected, by (served, corrected) pair."""
    return _store(ws).production_summary()


# -- approvals --------------------------------------------------------------------------------------------------
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
def approvers(ws: str) -> list[str]:
    users = _store(ws).users()
    return users.loc[users["role"] == "approver", "name"].tolist()


# -- audit ---------------------------------------------------------------------------------------------------------
@_cached
def audit_log(ws: str) -> pd.DataFrame:
    frame = _store(ws).audit_entries()
    return frame[["seq", "at", "actor", "action", "subject", "detail"]]


@_cached
def audit_check(ws: str) -> dict:
    report = audit.verify(_store(ws))
    return {"ok": report.ok, "entries": report.entries, "first_bad_seq": report.first_bad_seq,
            "problem": report.problem}


# -- synthetic samples ---------------------------------------------------------------------------------------------
@_cached
def sample_facets(ws: str) -> dict[str, list]:
    return _store(ws).sample_facets()


@_cached
def sample_page(ws: str, cycle_id: int | None = None, generator: str | None = None, status: str | None = None,
                label: str | None = None, search: str = "", difficulty: int | None = None,
                min_confidence: float | None = None, page: int = 1, page_size: int = 50
                ) -> tuple[pd.DataFrame, int, int]:
    """Filtered and paged in DuckDB by the store: (rows, total matching, page actually shown)."""
    return _store(ws).sample_page(page, page_size, cycle_id=cycle_id, generator=generator, status=status,
                                  label=label, search=search, difficulty=difficulty, min_confidence=min_confidence)


def review_samples(ws: str, who, ids: list[int] | None, filters: dict, action: str, label: str | None,
                   comment: str = "") -> int:
    """Approve, reject or relabel samples as the signed-in approver; ids=None means every sample the filters
    match."""
    from core import actions

    done = actions.review_samples(workspace(ws), who, ids, action, label, comment, filters)
    clear()
    return done


@_cached
def label_queue(ws: str) -> pd.DataFrame:
    """The texts curation asked people to label and nobody has answered yet, with their suggestions unpacked."""
    queue = _store(ws).label_requests(status="pending")
    return queue.assign(suggestions=[json.loads(s or "[]") for s in queue["suggestions"]])


def answer_label_request(ws: str, who, request_id: int, label: str | None = None, skip: bool = False) -> dict:
    """A label (or a skip) for one requested text, as the signed-in labeler or approver."""
    from core import actions

    done = actions.answer_label_request(workspace(ws), who, int(request_id), label, skip=skip)
    clear()
    return done


def export_bytes(ws: str, who, filters: dict, fmt: str) -> bytes:
    """The kept samples matching the filters as a file, for an approver (exports leave with the data)."""
    import tempfile

    from core import actions

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"samples.{fmt}"
        actions.export_samples(workspace(ws), who, out, filters, destination=f"dashboard download (.{fmt})")
        return out.read_bytes()


@_cached
def attributions(ws: str, cycle_id: int) -> pd.DataFrame:
    return _store(ws).attributions(int(cycle_id))


@_cached
def is_sql(ws: str) -> bool:
    """The workspace's skill is SQL migrations (the sql-migrations preset): pages show its texts as code."""
    return "sql_migrations" in workspace(ws).config().curate.generators


def execution_evidence(scores: str | None) -> tuple[dict | None, dict]:
    """A sample's stored scores split into what execution found (None: not executed) and the rest."""
    parsed = json.loads(scores or "{}")
    return parsed.pop("sandbox", None), parsed


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
def diagnosis_internals(ws: str, cycle_id: int) -> dict:
    return _store(ws).diagnosis_internals(int(cycle_id))


def token_html(tokens: list[str], scores: list[float]) -> str:
    """Tokens as coloured text: green pushed toward the target class, red pushed away."""
    import html

    peak = max((abs(s) for s in scores), default=1.0) or 1.0
    spans = []
    for token, value in zip(tokens, scores):
        if token in ("[CLS]", "[SEP]", "[PAD]"):
            continue
        alpha = min(1.0, abs(value) / peak)
        rgb = "34,139,34" if value >= 0 else "205,38,38"
        text = html.escape(token[2:] if token.startswith("##") else " " + token)
        spans.append(f'<span style="background: rgba({rgb},{alpha:.2f}); border-radius: 3px" '
                     f'title="{value:+.3f}">{text}</span>')
    return "".join(spans)


# -- scaffolds ---------------------------------------------------------------------------------------------------
@_cached
def scaffold_overview(ws: str) -> dict:
    """Production scaffold, archive with lineage and search scores, trials with their A/B results."""
    from core.scaffolds.report import overview

    return overview(_store(ws))


@_cached
def scaffold_trial(ws: str, cycle_id: int) -> dict | None:
    return _store(ws).scaffold_trial(int(cycle_id))


# -- models page: lineage and version detail ---------------------------------------------------------------------


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


# -- diagnosis page: error map and finding trends ---
FINDING_KINDS = {"confusion_pair": "Confused pair", "weak_class": "Weak class", "error_cluster": "Error cluster",
                 "production_error": "Production error", "gate_rejection": "Gate rejection"}
TREND_BADGES = {"new": "● new", "persisting": "↻ persisting", "fixed": "✓ fixed"}
CORRECT, UNCLUSTERED = "correct", "other errors"


def finding_trends(current: pd.DataFrame, previous: pd.DataFrame) -> pd.DataFrame:
    """Each finding of `current` with its trend: new, persisting or fixed (in `previous`, gone now).

    The diagnosis stores each finding's trend (clusters match on shared terms, and it lists the fixed ones
    itself); a diagnosis stored before trends existed is compared with the previous one on (kind, subject)."""
    details = [json.loads(d) if isinstance(d, str) else dict(d or {}) for d in current.get("detail", [])]
    frame = current.assign(detail=details).reset_index(drop=True)
    stored = [d.get("trend") for d in details]
    if len(frame) and all(stored):
        return frame.assign(trend=stored)
    before = {(k, s) for k, s, d in zip(previous.get("kind", []), previous.get("subject", []),
                                         previous.get("detail", []))
              if json.loads(d or "{}").get("trend") != "fixed"}
    now = set(zip(frame.get("kind", []), frame.get("subject", [])))
    frame = frame.assign(trend=["persisting" if pair in before else "new"
                                for pair in zip(frame.get("kind", []), frame.get("subject", []))])
    fixed = pd.DataFrame([{"kind": k, "subject": s, "severity": 0.0, "detail": {"trend": "fixed"},
                           "action": "none: fixed since the last diagnosis", "trend": "fixed"}
                          for k, s in sorted(before - now)])
    if fixed.empty:
        return frame
    fixed.insert(0, "rank", range(len(frame) + 1, len(frame) + len(fixed) + 1))
    return pd.concat([frame, fixed], ignore_index=True)


def _evidence(kind: str, detail: dict, trend: str) -> str:
    """One line a person reads for what the finding rests on (the detail panel shows the rest)."""
    if trend == "fixed":
        return "in the previous diagnosis, not in this one"
    if kind == "weak_class":
        recall = detail.get("recall")
        return (f"recall {100 * recall:.1f}% of {detail.get('support', '?')} held-out examples"
                if recall is not None else "")
    if kind == "error_cluster":
        labels = ", ".join(f"{k} ({v})" for k, v in (detail.get("labels") or {}).items())
        return f"true classes: {labels}" if labels else ""
    if kind in ("confusion_pair", "production_error"):
        tokens = list(dict.fromkeys(t for row in detail.get("top_tokens") or [] for t in row))[:6]
        return f"model leaned on: {', '.join(tokens)}" if tokens else f"{detail.get('n', '?')} example(s)"
    if kind == "gate_rejection":
        return detail.get("reason", "")
    return ""


@_cached
def findings(ws: str, cycle_id: int) -> pd.DataFrame:
    """A cycle's findings for people: rank, trend badge, kind label, subject, errors explained, evidence,
    action, and the parsed detail (a dict) for the page's detail panel."""
    columns = ["rank", "trend", "badge", "kind", "kind_label", "subject", "severity", "evidence", "action",
               "detail"]
    store = _store(ws)
    current = store.diagnoses(int(cycle_id))
    _, previous = store.latest_diagnosis(before_cycle=int(cycle_id))
    if current.empty and (previous.empty or not store.diagnosis_internals(int(cycle_id))):
        return pd.DataFrame(columns=columns)  # nothing found, or the cycle has not diagnosed yet
    frame = finding_trends(current, previous)
    frame["badge"] = frame["trend"].map(lambda t: TREND_BADGES.get(t, t))
    frame["kind_label"] = frame["kind"].map(lambda k: FINDING_KINDS.get(k, str(k).replace("_", " ")))
    frame["evidence"] = [_evidence(k, d, t) for k, d, t in zip(frame["kind"], frame["detail"], frame["trend"])]
    return frame[columns]


def _hover_text(text, width: int = 60) -> str:
    import html
    import textwrap

    return "<br>".join(textwrap.wrap(html.escape(str(text or "")), width)[:6])


@_cached
def error_map(ws: str, cycle_id: int) -> pd.DataFrame:
    """The held-out (selection part) examples the diagnosis embedded, at its 2-D coordinates, each with its
    text, prediction and group: the error cluster it belongs to, "other errors" or "correct"; `terms` are the
    cluster's distinctive terms, `hover` the text wrapped for a chart's hover box."""
    columns = ["example_id", "x", "y", "label", "predicted", "correct", "text", "group", "terms", "hover"]
    stored = diagnosis_internals(ws, cycle_id).get("error_map")
    if not stored or not stored.get("example_ids"):
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame({"example_id": stored["example_ids"], "x": stored["x"], "y": stored["y"],
                          "label": stored["label"], "correct": [bool(c) for c in stored["correct"]]})
    store = _store(ws)
    version = (store.cycle(int(cycle_id)) or {}).get("parent_version")
    if not version:  # an on-demand diagnosis (cycle 0): its attributions name the version
        attr = store.attributions(int(cycle_id))
        version = attr["version"].iloc[0] if len(attr) else None
    results = store.eval_results(version, "selection") if version else \
        pd.DataFrame(columns=["example_id", "predicted", "text"])
    frame = frame.merge(results[["example_id", "predicted", "text"]], on="example_id", how="left")
    clusters = store.diagnoses(int(cycle_id))
    member_of: dict[int, tuple[str, str]] = {}
    for subject, detail in zip(clusters["subject"], clusters["detail"]):
        d = json.loads(detail or "{}")
        for m in d.get("members") or []:
            member_of[int(m["example_id"])] = (subject, ", ".join(d.get("terms") or []))
    frame["group"] = [CORRECT if ok else member_of.get(int(e), (UNCLUSTERED, ""))[0]
                      for e, ok in zip(frame["example_id"], frame["correct"])]
    frame["terms"] = [member_of.get(int(e), ("", "–"))[1] if not ok else "–"
                      for e, ok in zip(frame["example_id"], frame["correct"])]
    frame["hover"] = frame["text"].map(_hover_text)
    return frame[columns]


@_cached
def confused_pairs(ws: str, version: str) -> pd.DataFrame:
    """Off-diagonal cells of the held-out confusion, most examples first: label, predicted, n, share of
    the label's held-out examples."""
    matrix = confusion(ws, version)
    support = matrix.sum(axis=1)
    rows = [{"label": t, "predicted": p, "n": int(matrix.loc[t, p]),
             "share": matrix.loc[t, p] / support[t] if support[t] else None}
            for t in matrix.index for p in matrix.columns if t != p and matrix.loc[t, p] > 0]
    frame = pd.DataFrame(rows, columns=["label", "predicted", "n", "share"])
    return frame.sort_values(["n", "label"], ascending=[False, True]).reset_index(drop=True)


# -- review pages ---------------------------------------------------------------------------------------------
CHAIN_CASES = {"intact": "intact", "altered": "an entry was altered", "deleted": "entries were deleted",
               "reordered": "entries were reordered", "truncated": "entries were cut from the end",
               "unverifiable": "it cannot be checked without its key",
               "downgraded": "its key identity was removed to pass it off as unkeyed",
               "rekeyed": "it names another key than the one it was keyed with",
               "redirected": "its workspace id points the key lookup elsewhere",
               "unkeyed": "it is not keyed, so it could have been rewritten"}


@_cached
def audit_chain(ws: str) -> dict:
    """The audit chain's verdict for people: audit_check's fields plus what kind of damage, and since which entry
    the log is sealed with the workspace's key (None: plain hashes, a log from before keys)."""
    report = audit.verify(_store(ws))
    return {"ok": report.ok, "entries": report.entries, "first_bad_seq": report.first_bad_seq,
            "problem": report.problem, "case": CHAIN_CASES.get(report.case, report.case),
            "keyed_from": report.keyed_from}
