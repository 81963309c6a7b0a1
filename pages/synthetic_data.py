"""Synthetic data: every curated sample with its provenance and why it was kept or dropped.

Filtering and paging run in DuckDB (app/queries.sample_page); only one page of rows ever reaches the page.
Reviewing and exporting are the signed-in approver's (core.actions); a viewer reads only. The label queue (the
human budget) comes first: an approver or a labeler answers each text with one click.
"""
import pandas as pd
import plotly.express as px
import streamlit as st

from app import queries, session
from core.auth import AuthError
from core.store import StoreConflict

ws = queries.workspace_path()
st.title("Synthetic data")
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
            "skipped" if skip else f"labeled {done['label']}: it counts as seed from the next cycle"))


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
               "`curate.ask_humans_per_cycle` per cycle). A label counts as seed from the next cycle and wins over "
               "the teacher's; it is audited.")
    labeler = session.labeler()
    all_labels = queries.labels(ws)
    for r in queue.head(QUEUE_SHOWN).itertuples():
        with st.container(border=True):
            show_text(r.text)
            st.caption(f"request {r.id} · cycle {r.cycle_id} · score {r.score:.3f} (uncertainty {r.uncertainty:.2f} "
                       f"× density {r.density:.2f}) · suggested: "
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
        per = pd.DataFrame([{"Generator": g, "Generated": v.get("generated", 0), "Kept": v.get("kept", 0),
                             "Note": v.get("note", "–")} for g, v in report["per_generator"].items()])
        st.dataframe(per, hide_index=True)
        asks = report.get("asks") or {}
        if asks:
            st.caption("The diagnosis' asks: samples asked for, produced by the generators and kept")
            st.dataframe(pd.DataFrame([{"Asked for": k.split(":", 1)[1].replace("->", " → "),
                                        "Kind": "confused pair" if k.startswith("pair:") else "class",
                                        "Asked": v["asked"], "Produced": v["produced"], "Kept": v["kept"]}
                                       for k, v in asks.items()]), hide_index=True)
        mix = report.get("difficulty") or {}
        if mix.get("requested"):
            frame = pd.DataFrame({"Level": LEVELS * 3,
                                  "Share": [*mix["requested"], *mix["achieved_written"], *mix["achieved_traffic"]],
                                  "Of": ["requested"] * 4 + [f"kept written ({mix['written_kept']:,})"] * 4
                                        + ["kept traffic (measured)"] * 4})
            fig = px.bar(frame, x="Level", y="Share", color="Of", barmode="group", height=280)
            fig.update_layout(yaxis_tickformat=".0%", margin=dict(l=0, r=0, t=10, b=0), legend_title_text="")
            st.plotly_chart(fig, key=f"mix_{cycle}")
        sandbox = report.get("sandbox")
        if sandbox:
            st.caption(f"Executed by {sandbox['check']}: {sandbox['executed']:,} candidates, "
                       f"{sandbox['confirmed']:,} confirmed, {sandbox.get('kept', 0):,} kept "
                       f"({sandbox.get('checks_per_s') or '-'} checks/s); why execution dropped the rest:")
            st.dataframe(pd.DataFrame([{"Reason": why, "Samples": n} for why, n in
                                       sorted(sandbox["dropped_by"].items(), key=lambda kv: -kv[1])]),
                         hide_index=True)


c1, c2, c3, c4 = st.columns(4)
cycle_id = c1.selectbox("Cycle", [None, *facets["cycle_id"]], format_func=every)
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
st.dataframe(rows, hide_index=True, column_config={
    "confidence": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="%.2f"),
    "text": st.column_config.TextColumn(width="large")})
st.pagination(pages, default=page, key=key)

# The yield of the chosen cycle (the latest without a choice): asked vs produced, requested vs achieved mix.
shown_cycle = cycle_id if cycle_id is not None else max(facets["cycle_id"])
report = queries.yield_report(ws, shown_cycle)
if report:
    show_yield(report, shown_cycle)

if len(rows):
    with st.expander("One sample with its evidence", expanded=False):
        pick = st.selectbox("Sample on this page", rows["id"].tolist(), key="detail_id")
        row = rows[rows["id"] == pick].iloc[0]
        show_text(row["text"])
        st.caption(f"{row['generator']} · label {row['label']} · {row['status']}: {row['reason'] or '–'}")
        executed, other = queries.execution_evidence(row["scores"])
        if executed:
            st.markdown(f"**Execution** ({'confirms its label' if executed['keep'] else 'does not confirm it'}): "
                        f"{executed['reason']}")
            st.json(executed.get("evidence") or {}, expanded=False)
        if other:
            st.json(other, expanded=False)

st.subheader("Review")
st.caption("A person's decision wins over every verifier, in this cycle and later ones, and is audited.")
who = session.actor()
if who:
    with st.form("review_samples"):
        ids = st.multiselect("Samples on this page", rows["id"].tolist(), key="review_ids")
        everything = st.checkbox(f"All {total:,} matching samples instead", key="review_all")
        r1, r2 = st.columns(2)
        action = r1.radio("Decision", ["approve", "reject", "relabel"], horizontal=True, key="review_action")
        to_label = r2.selectbox("New label (relabel)", queries.labels(ws), key="review_label")
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
