"""Overview: what is in production, what waits for a person, how accuracy moved across versions."""
import plotly.graph_objects as go
import streamlit as st

from app import nav, queries

ws = queries.workspace_path()
st.title("Overview")

cycles = queries.cycles(ws)
if cycles.empty:
    st.info("This workspace has no cycles yet. Start the first one (it trains the baseline):\n\n"
            f"```bash\npython -m core evolve --workspace {ws}\n```")
    st.caption(f"{len(queries.labels(ws))} labels loaded.")
    st.stop()

pending = queries.pending_gates(ws)
if pending:
    ids = ", ".join(str(g["id"]) for g in pending)
    st.warning(f"{len(pending)} gate(s) wait for a decision: gate {ids}. Nothing is promoted until someone "
               "approves.", icon=":material/pending_actions:")
    st.page_link(nav.path("approvals"), label="Decide in Approvals", icon=":material/gavel:")

production = queries.alias(ws, "production")
prod_eval = queries.evaluation(ws, production) if production else None
candidate = queries.alias(ws, "candidate")
c1, c2, c3, c4 = st.columns(4)
c1.metric("Production", production or "-")
c2.metric("Gate estimate", f"{prod_eval['accuracy']:.4f}" if prod_eval else "-",
          help="accuracy on the held-out rows only the gates read")
c3.metric("Candidate", candidate or "-")
c4.metric("Cycles", len(cycles))

st.subheader("Cycles")
st.dataframe(cycles[["id", "kind", "stage", "status", "parent_version", "candidate_version", "created_at",
                     "finished_at", "error"]].sort_values("id", ascending=False), hide_index=True)

st.subheader("Gate estimate by version (95% interval)")
evals = queries.evaluations(ws)
if evals.empty:
    st.caption("No version has been evaluated yet.")
else:
    fig = go.Figure(go.Scatter(x=evals["version"], y=evals["accuracy"], mode="lines+markers", name="accuracy",
                               error_y={"type": "data", "symmetric": False,
                                        "array": evals["ci_high"] - evals["accuracy"],
                                        "arrayminus": evals["accuracy"] - evals["ci_low"]},
                               hovertemplate="%{x}: %{y:.4f}<extra></extra>"))
    if production in set(evals["version"]):
        fig.add_trace(go.Scatter(x=[production], y=evals.loc[evals["version"] == production, "accuracy"],
                                 mode="markers", marker={"size": 14, "symbol": "star"}, name="production"))
    fig.update_layout(xaxis_title="version", yaxis_title="gate estimate", height=320,
                      margin={"t": 20, "b": 40})
    st.plotly_chart(fig)

st.subheader("Production traffic")
traffic = queries.production_traffic(ws)
if not traffic["predictions"]:
    st.caption(f"No production traffic yet. Serve the production model with "
               f"`python -m core serve --workspace {ws}`; its predictions and people's corrections land here, "
               "feed curation, and rank first in the next diagnosis.")
else:
    t1, t2, t3, t4 = st.columns(4)
    t1.metric("Requests", f"{traffic['predictions']:,}")
    t2.metric("Feedback", f"{traffic['feedback']:,}")
    t3.metric("Corrected errors", f"{traffic['corrected_errors']:,}")
    t4.metric("Last request", queries.when(traffic["last"]))
    if len(traffic["corrected_pairs"]):
        st.caption("Errors people corrected, by what was served and what it should have been:")
        st.dataframe(traffic["corrected_pairs"].head(10), hide_index=True)
