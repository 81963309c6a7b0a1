"""Synthetic data: every curated sample with its provenance and why it was kept or dropped.

Filtering and paging run in DuckDB (app/queries.sample_page); only one page of rows ever reaches the page.
"""
import streamlit as st

from app import queries

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

filters = {"cycle_id": cycle_id, "generator": generator, "status": status, "label": label, "search": search}
key = "samples_page:" + repr(sorted(filters.items())) + f":{page_size}"  # new filters start at page 1
rows, total, page = queries.sample_page(ws, **filters, page=st.session_state.get(key, 1), page_size=page_size)

pages = max(1, -(-total // page_size))
st.caption(f"{total:,} matching samples · page {page} of {pages}")
st.dataframe(rows, hide_index=True, column_config={
    "confidence": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="%.2f"),
    "text": st.column_config.TextColumn(width="large")})
st.pagination(pages, default=page, key=key)
