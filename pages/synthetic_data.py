"""Synthetic data: every curated sample with its provenance and why it was kept or dropped.

Filtering and paging run in DuckDB (app/queries/synthetic_data.sample_page); only one page of rows reaches the page.
Reviewing and exporting are the signed-in approver's (core.actions); a viewer reads only. The label queue (the
human budget) comes first: an approver or a labeler answers each text with one click.
"""
import json

import pandas as pd
import plotly.express as px
import streamlit as st

from app import session, tables
from app.queries import shared, synthetic_data as queries
from core.auth import AuthError
from core.actions import LABEL_USE
from core.store import StoreConflict

ws = shared.workspace_path()
st.title("Synthetic data")
st.caption(tables.TIMES_ARE_UTC)
QUEUE_SHOWN = 10  # requests shown at once; answering one brings the next


def answer(request_id: int, label: str | None = None, skip: bool = False) -> None:
    """A button's callback: runs before the page, so the queue below is drawn without the answered text."""
    if label is None and not skip:
        label = st.session_state.get(f"label_other_{request_id}")
    try:
        done = queries.answer_label_request(ws, session.acting(), request_id, label, skip)
    except (AuthError, ValueError, KeyError, StoreConflict) as err:
        st.session_state["label_message"] = ("error", str(err.args[0] if err.args else err))
    else:
        st.session_state["label_message"] = ("success", f"request {done['id']} " + (
            "skipped" if skip else f"labeled {done['label']}: " + LABEL_USE[done["purpose"]]))


SQL = queries.is_sql(ws)


def show_text(text: str) -> None:
    """A migration reads as code; a ticket as text."""
    if SQL:
        st.code(text, language="sql")
    else:
        st.text(text)


queue = queries.label_queue(ws)
message = st.session_state.pop("label_message", None)
if message:
    getattr(st, message[0])(message[1])
if len(queue):
    st.subheader(f"Label queue: {len(queue):,} texts wait for a person")
    st.caption("The pool texts where the model's views disagree most (uncertainty × density, "
               "`curate.ask_humans_per_cycle` per cycle): a label counts as seed from the next cycle and wins over "
               "the teacher's. Traffic labels (`gates.traffic_labels_per_cycle`): probe rows where candidate and "
               "production disagree, drawn at random; they grade the candidate and are never trained on. Every "
               "answer is audited.")
    labeler = session.labeler()
    all_labels = shared.labels(ws)
    for r in queue.head(QUEUE_SHOWN).itertuples():
        with st.container(border=True):
            show_text(r.text)
            why = ("traffic label: it grades candidate against production, never trained on"
                   if r.purpose == "evaluate" else f"score {r.score:.3f} (uncertainty {r.uncertainty:.2f} × density "
                                                   f"{r.density:.2f})")
            st.caption(f"request {r.id} · cycle {r.cycle_id} · {why} · suggested: "
                       + ", ".join(f"{h['label']} {h['p']:.0%}" for h in r.suggestions))
            if labeler:
                cols = st.columns(len(r.suggestions) + 3)
                for col, hint in zip(cols, r.suggestions):
                    col.button(hint["label"], key=f"label_{r.id}_{hint['label']}", on_click=answer,
                               args=(r.id, hint["label"]))
                cols[-3].selectbox("Any label", all_labels, key=f"label_other_{r.id}", label_visibility="collapsed")
                cols[-2].button("Label", key=f"label_pick_{r.id}", on_click=answer, args=(r.id,))
                cols[-1].button("Skip", key=f"label_skip_{r.id}", on_click=answer, args=(r.id, None, True))

facets = queries.sample_facets(ws)
if not facets["cycle_id"]:
    st.info("No samples yet: an evolution cycle's curate stage writes them.")
    st.stop()


def every(value) -> str:
    return "all" if value is None else str(value)


LEVELS = ["0 easy", "1", "2", "3 hard"]


def show_yield(report: dict, cycle: int) -> None:
    """What curation was asked for against what it produced and kept, and the difficulty it achieved."""
    with st.expander(f"Yield of cycle {cycle}: {report.get('summary', '')}", expanded=False):
        per = pd.DataFrame([{"generator": g, **v} for g, v in report["per_generator"].items()],
                           columns=["generator", "generated", "kept", "note"])
        generated, kept = per["generated"].fillna(0).sum(), per["kept"].fillna(0).sum()
        m1, m2, m3 = st.columns(3)
        m1.metric("Generated", f"{int(generated):,}")
        m2.metric("Kept", f"{int(kept):,}")
        m3.metric("Kept of generated", tables.percent(kept / generated, 0) if generated else tables.EMPTY)
        tables.show(per, {"generator": "Generator", "generated": "Generated", "kept": "Kept", "note": "Note"},
                    {"generated": "count", "kept": "count"})
        asks = report.get("asks") or {}
        if asks:
            st.caption("The diagnosis' asks: samples asked for, produced by the generators and kept")
            tables.show(pd.DataFrame([{"what": k.split(":", 1)[1].replace("->", " → "),
                                       "kind": "confused pair" if k.startswith("pair:") else "class",
                                       "asked": v["asked"], "produced": v["produced"], "kept": v["kept"]}
                                      for k, v in asks.items()]),
                        {"what": "Asked for", "kind": "Kind", "asked": "Asked", "produced": "Produced",
                         "kept": "Kept"}, {"asked": "count", "produced": "count", "kept": "count"})
        mix = report.get("difficulty") or {}
        if mix.get("requested"):
            frame = pd.DataFrame({"Level": LEVELS * 3,
                                  "Share": [*mix["requested"], *mix["achieved_written"], *mix["achieved_traffic"]],
                                  "Of": ["requested"] * 4 + [f"kept written ({mix['written_kept']:,})"] * 4
                                        + ["kept traffic (measured)"] * 4})
            fig = px.bar(frame, x="Level", y="Share", color="Of", barmode="group", height=280)
            fig.update_layout(yaxis_tickformat=".0%", margin=dict(l=0, r=0, t=10, b=0), legend_title_text="")
            st.plotly_chart(fig, key=f"mix_{cycle}")
        if mix.get("levels"):
            st.caption("Difficulty on request: samples each generator was asked for and wrote, per level")
            tables.show(pd.DataFrame([{"generator": g, "level": LEVELS[level], "requested": t["requested"][level],
                                       "produced": t["produced"][level]}
                                      for g, t in mix["levels"].items() for level in range(4)]),
                        {"generator": "Generator", "level": "Level", "requested": "Requested", "produced": "Produced"},
                        {"requested": "count", "produced": "count"})
        if mix.get("moved"):
            st.caption("Mixes the last curation's results moved")
            tables.show(pd.DataFrame([{"label": label, "mix": " / ".join(f"{m:.0%}" for m in mix["mixes"][label]),
                                       "why": why} for label, why in mix["moved"].items()]),
                        {"label": "Class", "mix": "Mix asked (easy → hard)", "why": "Why"})
        sandbox = report.get("sandbox")
        if sandbox:
            st.caption(f"Executed by {sandbox['check']}: {sandbox['executed']:,} candidates, "
                       f"{sandbox['confirmed']:,} confirmed, {sandbox.get('kept', 0):,} kept "
                       f"({sandbox.get('checks_per_s') or tables.EMPTY} checks/s); why execution dropped the rest:")
            dropped = pd.DataFrame(sorted(sandbox["dropped_by"].items(), key=lambda kv: -kv[1]),
                                   columns=["why", "n"])
            tables.show(dropped, {"why": "Reason", "n": "Samples"}, {"n": "count"})


# The table's headings; a sample's scores (JSON) are spread into one column per score, per page of rows only.
SAMPLE_COLUMNS = {"id": "Sample", "cycle_id": "Cycle", "status": "Status", "label": "Label", "text": "Text",
                  "reason": "Reason", "generator": "Generator", "confidence": "Verifier score",
                  "difficulty": "Difficulty"}
SAMPLE_TAIL = {"parent_id": "Written from", "created_at": "Created at"}
SAMPLE_FORMATS = {"id": "text", "cycle_id": "text", "confidence": "number", "difficulty": "count",
                  "parent_id": "text", "created_at": "time"}
SCORES = {"model": "Model score", "knn": "kNN agreement", "knn_top": "kNN ranks it first",
          "consistency": "Consistency", "margin": "Margin", "teacher": "Teacher", "target": "Written toward",
          "level": "Written at level"}


def score_heading(key: str) -> str:
    return SCORES.get(key) or f"{key.replace('_', ' ').capitalize()} (score)"


def sample_table(rows: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The page's rows with their scores spread into columns (execution evidence stays for the panel), and the
    headings to show them under."""
    scores = [json.loads(s) if not tables.is_empty(s) else {} for s in rows["scores"]]
    keys: list[str] = []
    for d in scores:
        keys += [k for k in d if k not in keys and not isinstance(d[k], dict)]
    frame = rows.assign(difficulty=rows["difficulty"].where(rows["difficulty"] >= 0),  # -1: never scored
                        **{f"score {k}": [d.get(k) for d in scores] for k in keys})
    headings = {**SAMPLE_COLUMNS, **{f"score {k}": score_heading(k) for k in keys}, **SAMPLE_TAIL}
    return frame, headings


def sample_panel(row: pd.Series) -> None:
    """One sample whole: its text, where it came from, why it was kept or dropped, every score."""
    with st.container(border=True):
        st.markdown(f"**Sample {row['id']}** · cycle {row['cycle_id']} · {row['generator']} · label "
                    f"**{row['label']}** · {row['status']}")
        show_text(row["text"])
        st.caption(f"{tables.text(row['reason'])} · written from {tables.text(row['parent_id'])} · "
                   f"created {tables.when(row['created_at'])}")
        executed, other = queries.execution_evidence(row["scores"])
        numbers = dict([(k, v) for k, v in other.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)][:6])  # one row of metrics
        for col, (k, v) in zip(st.columns(len(numbers)) if numbers else [], numbers.items()):
            col.metric(score_heading(k), tables.number(v, 3))
        rest = {score_heading(k): v for k, v in other.items() if k not in numbers}
        if rest:
            st.caption(" · ".join(f"{k}: {tables.text(v)}" for k, v in rest.items()))
        if executed:
            st.markdown(f"**Execution** ({'confirms its label' if executed['keep'] else 'does not confirm it'}): "
                        f"{executed['reason']}")
            evidence = executed.get("evidence") or {}
            if evidence:
                tables.show(pd.DataFrame([(k.replace("_", " ").capitalize(), v) for k, v in evidence.items()],
                                         columns=["what", "value"]), {"what": "Evidence", "value": "Value"},
                            {"value": "text"}, column_config={"Value": st.column_config.TextColumn(width="large")})


asked_cycle = st.query_params.pop("cycle", None)  # a link from a gate (Approvals) opens its cycle, once
if asked_cycle is not None and asked_cycle.isdigit() and int(asked_cycle) in facets["cycle_id"]:
    st.session_state["samples_cycle"] = int(asked_cycle)
c1, c2, c3, c4 = st.columns(4)
cycle_id = c1.selectbox("Cycle", [None, *facets["cycle_id"]], format_func=every, key="samples_cycle")
generator = c2.selectbox("Generator", [None, *facets["generator"]], format_func=every)
status = c3.selectbox("Status", [None, *facets["status"]], format_func=every)
label = c4.selectbox("Label", [None, *facets["label"]], format_func=every)
c5, c6 = st.columns([4, 1])
search = c5.text_input("Text contains", placeholder="words in the sample text")
page_size = c6.selectbox("Rows per page", [25, 50, 100, 200], index=1)
c7, c8 = st.columns(2)
difficulty = c7.selectbox("Difficulty (0 easy .. 3 hard)", [None, *[d for d in facets["difficulty"] if d >= 0]],
                          format_func=every, key="difficulty")
min_confidence = c8.slider("Model verifier score at least", 0.0, 1.0, 0.0, 0.05, key="min_confidence")

filters = {"cycle_id": cycle_id, "generator": generator, "status": status, "label": label, "search": search,
           "difficulty": difficulty, "min_confidence": min_confidence or None}
key = "samples_page:" + repr(sorted(filters.items())) + f":{page_size}"  # new filters start at page 1
rows, total, page = queries.sample_page(ws, **filters, page=st.session_state.get(key, 1), page_size=page_size)

pages = max(1, -(-total // page_size))
st.caption(f"{total:,} matching samples · page {page} of {pages}")
table, headings = sample_table(rows)
event = tables.show(table, headings, SAMPLE_FORMATS, on_select="rerun", selection_mode="single-row",
                    key="samples_table",
                    column_config={"Text": st.column_config.TextColumn(width="large"),
                                   "Reason": st.column_config.TextColumn(width="medium")})
st.pagination(pages, default=page, key=key)

# The yield of the chosen cycle (the latest without a choice): asked vs produced, requested vs achieved mix.
shown_cycle = cycle_id if cycle_id is not None else max(facets["cycle_id"])
report = shared.yield_report(ws, shown_cycle)
if report:
    show_yield(report, shown_cycle)

picked = [i for i in event.selection.rows if i < len(rows)]
if picked:
    sample_panel(rows.iloc[picked[0]])
elif len(rows):
    st.caption("Select a row (the box at its left) to read the whole sample with its scores and evidence.")

st.subheader("Review")
st.caption("A person's decision wins over every verifier, in this cycle and later ones, and is audited.")
who = session.actor()
if who:
    with st.form("review_samples"):
        ids = st.multiselect("Samples on this page", rows["id"].tolist(), key="review_ids")
        everything = st.checkbox(f"All {total:,} matching samples instead", key="review_all")
        r1, r2 = st.columns(2)
        action = r1.radio("Decision", ["approve", "reject", "relabel"], horizontal=True, key="review_action")
        to_label = r2.selectbox("New label (relabel)", shared.labels(ws), key="review_label")
        comment = st.text_input("Comment", key="review_comment", placeholder="why (optional)")
        submitted = st.form_submit_button("Apply", key="review_submit")
    if submitted:
        try:
            done = queries.review_samples(ws, session.acting(), None if everything else ids, filters, action,
                                          to_label, comment)
        except (AuthError, ValueError, KeyError) as err:
            st.error(str(err.args[0] if err.args else err))
        else:
            done_as = {"approve": "approved", "reject": "rejected", "relabel": f"relabelled {to_label}"}[action]
            st.success(f"{done:,} samples {done_as} by {who.name}")

    st.subheader("Export")
    fmt = st.radio("Format", ["parquet", "jsonl"], horizontal=True, key="export_format")
    # Built on request only: reading every kept sample on each rerun would slow the page for everyone.
    if st.button("Prepare export of the kept samples matching the filters", key="export_prepare"):
        try:
            st.session_state["export_blob"] = (fmt, queries.export_bytes(ws, session.acting(), filters, fmt))
        except AuthError as err:
            st.error(str(err))
    blob = st.session_state.get("export_blob")
    if blob:
        st.download_button(f"Download (.{blob[0]})", data=blob[1], file_name=f"evolab-samples.{blob[0]}",
                           key="export_download")
