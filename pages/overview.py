"""Overview: the evolution story, one row per cycle, and above it what needs a person now.

The story's part (what needs a person, the versions, the timeline, the chart) is a fragment: while a cycle runs
it reads again every few seconds without reloading the page, says when it read, and says "updating…" while
the engine holds the store instead of failing.
"""
from datetime import datetime

import plotly.graph_objects as go
import streamlit as st

from app import nav, tables
from app.queries import overview as queries, shared
from core import traffic
from core.store import StoreBusy

ws = shared.workspace_path()
st.title("Overview")

try:
    live = queries.cycle_running(ws)
except StoreBusy:
    live = True  # read again in a moment

TIMELINE = {"cycle_id": "Cycle", "kind": "Kind", "outcome": "Outcome", "why": "Why", "stages_text": "Stages",
            "finding": "First finding", "samples_text": "Samples generated → kept",
            "candidate_text": "Candidate estimate", "production_text": "Production estimate",
            "decided": "Decided by", "net_gain": "Net gain", "created_at": "Started", "finished_at": "Finished"}


def needs_a_person(attention: dict, read_at: datetime) -> None:
    st.subheader("Needs a person now")
    gates = attention["gates"].to_dict("records")
    for gate in gates:
        kind = tables.gate_name(gate["kind"])
        versions = (f": candidate {gate['candidate']} against production {gate['production']}"
                    if not (tables.is_empty(gate["candidate"]) or tables.is_empty(gate["production"])) else "")
        left = (gate["deadline"] - read_at).total_seconds() if not tables.is_empty(gate["deadline"]) else None
        deadline = ("" if left is None else
                    f" Deadline {tables.when(gate['deadline'])} UTC "
                    + (f"(in {tables.duration(left)}); past it the gate is rejected." if left > 0
                       else "(passed: the engine rejects it at its next step)."))
        st.warning(f"**{kind.capitalize()} gate {gate['id']}** of cycle {gate['cycle_id']} waits for a "
                   f"decision{versions}. Nothing is promoted until someone approves.{deadline}",
                   icon=":material/pending_actions:")
    if gates:
        st.page_link(nav.path("approvals"), label="Decide in Approvals", icon=":material/gavel:")
    if attention["samples_to_review"]:
        st.info(f"{attention['samples_to_review']:,} kept samples nobody has reviewed wait before their cycle's "
                "data review gate.", icon=":material/rate_review:")
        st.page_link(nav.path("synthetic_data"), label="Review in Synthetic data", icon=":material/dataset:")
    if attention["label_requests"]:
        st.info(f"{attention['label_requests']:,} texts curation asked people to label wait for an answer.",
                icon=":material/label:")
        st.page_link(nav.path("synthetic_data"), label="Label in Synthetic data", icon=":material/dataset:")
    failed = attention["failed"]
    if failed:
        st.error(f"Cycle {failed['cycle_id']} failed at its {failed['stage'].replace('_', ' ')} stage "
                 f"({tables.when(failed['at'])} UTC): {failed['error'] or 'no error recorded'}. Nothing it made "
                 f"ships; the next cycle starts with `python -m core evolve --workspace {ws}`.",
                 icon=":material/error:")
    for cyc in attention["stuck"]:
        why = (f"its last try raised: {cyc['error']}" if cyc["error"] else
               f"the store has recorded no progress of it for {tables.duration(cyc['idle_s'])}")
        st.error(f"Cycle {cyc['cycle_id']} looks stuck at its {cyc['stage'].replace('_', ' ')} stage: {why}. "
                 f"Resume it with `python -m core resume --workspace {ws}`, or close it with `python -m core "
                 f"abandon --workspace {ws} --cycle {cyc['cycle_id']} --by NAME --comment WHY`.",
                 icon=":material/hourglass_disabled:")
    if not (gates or attention["samples_to_review"] or attention["label_requests"] or failed or attention["stuck"]):
        st.success("Nothing needs a person right now.", icon=":material/check_circle:")


def estimate_chart(timeline) -> None:
    st.subheader("Candidate estimate by cycle (95% interval)")
    points = timeline.dropna(subset=["cand_acc"]).iloc[::-1]
    if points.empty:
        st.caption("No candidate has been evaluated yet.")
        return
    x = [f"cycle {c}" for c in points["cycle_id"]]
    fig = go.Figure()
    groups = {"promoted": points["status"] == "done",
              "rejected, failed or abandoned": points["status"].isin(["rejected", "failed", "abandoned"]),
              "open": points["status"].isin(["running", "waiting"])}
    styles = {"promoted": ("seagreen", "circle"), "rejected, failed or abandoned": ("firebrick", "x"),
              "open": ("slategray", "diamond")}
    for name, mask in groups.items():
        part = points[mask.to_numpy()]
        if part.empty:
            continue
        color, symbol = styles[name]
        fig.add_trace(go.Scatter(
            x=[f"cycle {c}" for c in part["cycle_id"]], y=part["cand_acc"].astype(float), mode="markers",
            name=f"candidate, {name}", marker={"color": color, "symbol": symbol, "size": 9},
            error_y={"type": "data", "symmetric": False, "array": (part["cand_high"] - part["cand_acc"]).astype(float),
                     "arrayminus": (part["cand_acc"] - part["cand_low"]).astype(float)},
            customdata=part["candidate_version"], hovertemplate="%{x} (%{customdata}): %{y:.4f}<extra></extra>"))
    production = points["prod_acc"].astype(float)
    if production.notna().any():
        fig.add_trace(go.Scatter(x=x, y=production, mode="lines", line={"dash": "dot", "color": "gray"},
                                 name="production it started from", hovertemplate="%{x}: %{y:.4f}<extra></extra>"))
    fig.update_layout(xaxis_title="cycle", yaxis_title="expected accuracy", height=340, margin={"t": 20, "b": 40},
                      legend={"orientation": "h"})
    st.plotly_chart(fig)


def production_traffic(traffic: dict) -> None:
    st.subheader("Production traffic")
    if not traffic["predictions"]:
        st.caption(f"No production traffic yet. Serve the production model with "
                   f"`python -m core serve --workspace {ws}`; its predictions and people's corrections land here, "
                   "feed curation, and rank first in the next diagnosis.")
        return
    t1, t2, t3, t4 = st.columns(4)
    t1.metric("Requests", f"{traffic['predictions']:,}")
    t2.metric("Feedback", f"{traffic['feedback']:,}")
    t3.metric("Corrected errors", f"{traffic['corrected_errors']:,}")
    t4.metric("Last request", f"{tables.when(traffic['last'])} UTC")
    if len(traffic["corrected_pairs"]):
        st.caption("Errors people corrected, by what was served and what it should have been:")
        tables.show(traffic["corrected_pairs"].head(10), {"served": "Served", "corrected": "Corrected to",
                                                          "n": "Times"})


@st.fragment(run_every=queries.LIVE_REFRESH_S if live else None)
def evolution(was_live: bool) -> None:
    try:
        data = queries.overview(ws)
    except StoreBusy:
        st.caption(":material/hourglass_top: updating… (the engine is writing to the workspace)")
        return
    timeline, attention = data["timeline"], data["attention"]
    running = bool((timeline["status"] == "running").any()) if len(timeline) else False
    if was_live and not running:
        st.rerun()  # the cycle stopped running: redraw the page once, without the timer
    st.caption(f"Read at {data['read_at']:%H:%M:%S} UTC"
               + (f"; a cycle is running, read again every {queries.LIVE_REFRESH_S} s" if running else ""))
    if timeline.empty:
        st.info("This workspace has no cycles yet. Start the first one (it trains the baseline):\n\n"
                f"```bash\npython -m core evolve --workspace {ws}\n```")
        st.caption(f"{len(shared.labels(ws))} labels loaded.")
        return
    needs_a_person(attention, data["read_at"])

    production, candidate = data["production"], data["candidate"]
    made = timeline.set_index("candidate_version")["cand_acc"].dropna() if production else None
    prod_acc = made.get(production) if made is not None else None
    c1, c2, c3, c4, c5 = st.columns(5)
    c1.metric("Production", production or tables.EMPTY)
    c2.metric("Production estimate", tables.percent(prod_acc, 1),
              help="production's expected accuracy on traffic, carried over from the gate rows by a probe of "
                   "traffic nothing trains on (on the gate rows alone where the workspace has no probe)")
    c3.metric("Candidate", candidate or tables.EMPTY)
    counts = timeline["status"].value_counts()
    c4.metric("Cycles", f"{len(timeline):,}", help=f"{counts.get('done', 0)} promoted, "
                                                   f"{counts.get('rejected', 0)} rejected, "
                                                   f"{counts.get('failed', 0)} failed")
    found = data["resemblance"]
    c5.metric("Held-out like traffic", tables.EMPTY if not found else f"{found['resemblance']:.2f}",
              help="How much the held-out rows look like traffic (1 = alike): " + traffic.describe(found))
    if found and found["resemblance"] < 0.8:
        st.warning("Held-out rows look unlike traffic: " + traffic.describe(found), icon=":material/warning:")

    st.subheader("Cycles")
    tables.show(timeline, TIMELINE, {"cycle_id": "count", "created_at": "time", "finished_at": "time"})
    st.caption(f"Newest first. Estimates are the expected accuracy on traffic with a 95% interval (on the gate "
               f"part of the held-out set where the workspace has no traffic probe); the net gain is the gate's "
               f"paired gain on the gate rows. {tables.TIMES_ARE_UTC}")
    estimate_chart(timeline)
    production_traffic(data["traffic"])


evolution(live)
