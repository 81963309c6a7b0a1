"""Scaffolds: the production inference program, the searched archive with its lineage, A/B results with
confidence intervals, and the scaffold_adoption gates waiting for a person."""
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app import nav, queries

ws = queries.workspace_path()
st.title("Scaffolds")

info = queries.scaffold_overview(ws)
prod = info["production"]
c1, c2, c3, c4 = st.columns(4)
c1.metric("Production scaffold", prod["id"], help=prod["name"])
c2.metric("Model", info["model_version"] or "-")
c3.metric("Archive", len(info["archive"]))
c4.metric("Trials", len(info["trials"]))
st.caption(f"Production runs `{prod['steps']}`")

waiting = [g for g in queries.pending_gates(ws) if g["kind"] == "scaffold_adoption"]
if waiting:
    st.warning(f"{len(waiting)} scaffold_adoption gate(s) wait for a decision: gate "
               + ", ".join(str(g["id"]) for g in waiting) + ".", icon=":material/pending_actions:")
    st.page_link(nav.path("approvals"), label="Decide in Approvals", icon=":material/gavel:")

if not info["archive"]:
    st.info("No scaffold has been stored or searched yet. Search for a better inference program with:\n\n"
            f"```bash\npython -m core scaffolds search --workspace {ws} --budget 12\n```")
    st.stop()

st.subheader("Archive and lineage")
archive = pd.DataFrame(info["archive"])
st.dataframe(archive[["id", "name", "parent", "operator", "steps", "accuracy", "coverage", "guardrail_pass",
                      "novelty", "production", "cycle"]], hide_index=True,
             column_config={c: st.column_config.NumberColumn(format="%.3f")
                            for c in ("accuracy", "coverage", "guardrail_pass", "novelty")})
scored = archive.dropna(subset=["accuracy"])
if len(scored):
    # Each scaffold at (creation order, search accuracy), a line from its parent: the lineage tree.
    where = scored.set_index("id")[["num", "accuracy"]]
    fig = go.Figure()
    for row in scored.itertuples():
        if row.parent in where.index:
            fig.add_trace(go.Scatter(x=[where.loc[row.parent, "num"], row.num],
                                     y=[where.loc[row.parent, "accuracy"], row.accuracy], mode="lines",
                                     line={"color": "lightgray"}, hoverinfo="skip", showlegend=False))
    fig.add_trace(go.Scatter(x=scored["num"], y=scored["accuracy"], mode="markers+text", text=scored["id"],
                             textposition="top center", name="scaffold",
                             customdata=scored[["steps", "operator"]].fillna("built-in"),
                             hovertemplate="%{text}: %{y:.4f}<br>%{customdata[0]}<br>%{customdata[1]}<extra></extra>",
                             marker={"size": [14 if p else 8 for p in scored["production"]]}))
    fig.update_layout(xaxis_title="scaffold (creation order)", yaxis_title="search accuracy", height=340,
                      margin={"t": 20, "b": 40})
    st.plotly_chart(fig)

st.subheader("A/B tests")
if not info["trials"]:
    st.caption("No A/B test yet: `python -m core scaffolds search` ends with one.")
else:
    trials = pd.DataFrame(info["trials"])
    st.dataframe(trials[["cycle", "candidate", "production", "production_accuracy", "candidate_accuracy", "gain",
                         "ci_low", "ci_high", "p_value", "passed", "status", "gate", "gate_status", "model_version"]]
                 .sort_values("cycle", ascending=False), hide_index=True,
                 column_config={c: st.column_config.NumberColumn(format="%.4f")
                                for c in ("production_accuracy", "candidate_accuracy", "gain", "ci_low", "ci_high",
                                          "p_value")})
    done = trials.dropna(subset=["gain"])
    if len(done):
        fig = go.Figure(go.Scatter(
            x=[f"cycle {c}: {k}" for c, k in zip(done["cycle"], done["candidate"])], y=done["gain"], mode="markers",
            error_y={"type": "data", "symmetric": False, "array": done["ci_high"] - done["gain"],
                     "arrayminus": done["gain"] - done["ci_low"]},
            hovertemplate="%{x}: gain %{y:+.4f}<extra></extra>"))
        fig.add_hline(y=0, line_dash="dot")
        fig.update_layout(yaxis_title="accuracy gain over production (CI)", height=300, margin={"t": 20, "b": 40})
        st.plotly_chart(fig)
    for t in info["trials"][::-1][:5]:
        st.caption(f"cycle {t['cycle']}: " + "; ".join(t["reasons"] or [f"stage {t['stage']}"]))

if info["adoptions"]:
    st.subheader("Adoptions")
    st.dataframe(pd.DataFrame(info["adoptions"]).sort_values("id", ascending=False), hide_index=True)
