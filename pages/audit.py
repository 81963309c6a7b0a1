"""Audit: the hash-chained log of every decision, promotion and rollback, newest first.

The chain's verdict comes first; then the entries, each detail shortened to one line (the whole of it, key by
key, when a row is selected)."""
import json

import pandas as pd
import streamlit as st

from app import tables
from app.queries import audit as queries, shared

ws = shared.workspace_path()
st.title("Audit log")
st.caption(tables.TIMES_ARE_UTC)
DETAIL_SHOWN = 140  # characters of an entry's detail in the table; the panel below shows it whole

check = queries.audit_chain(ws)
if check["ok"]:
    # an unkeyed log never verifies here (audit.verify accepts one only when asked), so ok means keyed
    sealed = ("sealed with this workspace's key (HMAC-SHA256)" if check["keyed_from"] == 1 else
              f"sealed with this workspace's key from entry {check['keyed_from']} on")
    st.success(f"Chain verified: {check['entries']:,} entries, none altered or deleted; {sealed}.",
               icon=":material/verified:")
else:
    st.error(f"Audit log broken at entry {check['first_bad_seq']}: {check['case']}. {check['problem']}",
             icon=":material/gpp_bad:")

log = queries.audit_log(ws)
c1, c2 = st.columns(2)
actions = c1.multiselect("Actions", sorted(log["action"].unique()),
                         format_func=lambda a: a.replace("_", " "))
actors = c2.multiselect("Actors", sorted(log["actor"].unique()))
shown = log[log["action"].isin(actions or log["action"]) & log["actor"].isin(actors or log["actor"])]
shown = shown.sort_values("seq", ascending=False).reset_index(drop=True)
details = [json.loads(d) if not tables.is_empty(d) else {} for d in shown["detail"]]


def words(value):
    """A detail's keys as words (`failures_in_window` → `failures in window`), nested ones too."""
    if isinstance(value, dict):
        return {str(k).replace("_", " "): words(v) for k, v in value.items()}
    return [words(v) for v in value] if isinstance(value, list) else value


def shorten(detail: dict) -> str:
    line = tables.text(words(detail))
    return line if len(line) <= DETAIL_SHOWN else line[:DETAIL_SHOWN - 1] + "…"


table = shown.assign(action=shown["action"].str.replace("_", " "), detail=[shorten(d) for d in details],
                     subject=shown["subject"].str.replace(":", " ", n=1))  # "gate:3" reads "gate 3"
st.caption(f"{len(shown):,} of {len(log):,} entries, newest first. Select a row to read its whole detail.")
event = tables.show(table, {"seq": "Seq", "at": "At", "actor": "Actor", "action": "Action", "subject": "Target",
                            "detail": "Detail"}, {"seq": "text", "at": "time"},
                    on_select="rerun", selection_mode="single-row", key="audit_table",
                    column_config={"Detail": st.column_config.TextColumn(width="large")})

picked = [i for i in event.selection.rows if i < len(shown)] if event else []
if picked:
    entry, detail = shown.iloc[picked[0]], details[picked[0]]
    with st.container(border=True):
        st.markdown(f"**Entry {entry['seq']}** · {tables.when(entry['at'])} · {entry['actor']} · "
                    f"{entry['action'].replace('_', ' ')} · {entry['subject']}")
        if detail:
            rows = pd.DataFrame([(k.capitalize(), v) for k, v in words(detail).items()],
                                columns=["field", "value"])
            tables.show(rows, {"field": "Field", "value": "Value"}, {"value": "text"},
                        column_config={"Value": st.column_config.TextColumn(width="large")})
        with st.expander("As recorded (JSON)"):
            st.json(detail, expanded=True)
