"""Audit: the hash-chained log of every decision, promotion and rollback, newest first."""
import streamlit as st

from app import queries

ws = queries.workspace_path()
st.title("Audit log")

check = queries.audit_check(ws)
if check["ok"]:
    st.success(f"Chain verified: {check['entries']} entries, none altered or deleted.", icon=":material/verified:")
else:
    st.error(f"Audit log broken at entry {check['first_bad_seq']}: {check['problem']}")

log = queries.audit_log(ws)
c1, c2 = st.columns(2)
actions = c1.multiselect("Actions", sorted(log["action"].unique()))
actors = c2.multiselect("Actors", sorted(log["actor"].unique()))
shown = log[log["action"].isin(actions or log["action"]) & log["actor"].isin(actors or log["actor"])]
st.dataframe(shown.sort_values("seq", ascending=False), hide_index=True,
             column_config={"detail": st.column_config.JsonColumn(width="large")})
