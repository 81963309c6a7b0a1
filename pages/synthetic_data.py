"""Synthetic data: every curated sample with its provenance and why it was kept or dropped.

Filtering and paging run in DuckDB (app/queries.sample_page); only one page of rows ever reaches the page.
Reviewing and exporting are the signed-in approver's (core.actions); a viewer reads only.
"""
import streamlit as st

from app import queries, session
from core.auth import AuthError

ws = queries.workspace_path()
st.title("Synthetic data")

facets = queries.sample_facets(ws)
if not facets["cycle_id"]:
    st.info("No samples yet: an evolution cycle's curate stage writes them.")
    st.stop()


def every(value) -> str:
    return "all" if value is None else str(value)


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
