"""The overview page: every cycle's story and what waits for a person, in a few reads."""
from __future__ import annotations

import json

import pandas as pd

from app import tables
from app.queries.shared import _cached, _quick_store, _store
from core import stats, traffic as traffic_rows
from core.store import utcnow


STUCK_AFTER_S = 30 * 60  # an open, running cycle the store has seen no progress of for this long is stuck
LIVE_REFRESH_S = 5


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
    return (f"{100 * est['accuracy']:.1f}% (95% CI {100 * est['ci_low']:.1f}–{100 * est['ci_high']:.1f}%, "
            f"{traffic_rows.rests_on(est)})")


def _stages_text(row: dict) -> str | None:
    stages = [] if row["stages"] is None else list(row["stages"])  # a cycle with no stage run yet has none
    parts = [f"{s['stage'].replace('_', ' ')} {tables.duration(s['seconds'])}" for s in stages]
    if row["status"] in ("running", "waiting") and row["stage"] not in [s["stage"] for s in stages]:
        now = "now" if row["status"] == "running" else "waiting"
        if row["status"] == "running" and row.get("progress") and row.get("progress_stage") == row["stage"]:
            now = f"now: {row['progress']}, at {tables.when(row['progress_at'])} UTC"  # the executor's last note
        parts.append(f"{row['stage'].replace('_', ' ')} ({now})")
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


# -- production traffic (the server's logs) ------------------------------------------------------------------
@_cached
def production_traffic(ws: str) -> dict:
    """Requests per served version, feedback and the errors people corrected, by (served, corrected) pair."""
    return _store(ws).production_summary()
