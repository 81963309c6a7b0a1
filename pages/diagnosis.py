"""Diagnosis: what each cycle found wrong with its parent model, and where the model confuses classes."""
import plotly.express as px
import streamlit as st

from app import queries

ws = queries.workspace_path()
st.title("Diagnosis")

st.subheader("Findings per cycle")
evolve = queries.cycles(ws).query("kind == 'evolve'")
if evolve.empty:
    st.info("No evolution cycle yet: the baseline cycle trains on the labeled seed without a diagnosis.")
else:
    parents = dict(zip(evolve["id"].astype(int), evolve["parent_version"]))
    ids = list(parents)
    cycle_id = st.selectbox("Cycle", ids, index=len(ids) - 1, format_func=lambda c: f"cycle {c} (parent {parents[c]})")
    findings = queries.diagnoses(ws, cycle_id)
    if findings.empty:
        st.caption("This cycle has no findings (yet, or its parent made no held-out errors).")
    else:
        st.dataframe(findings[["rank", "kind", "subject", "severity", "action"]], hide_index=True,
                     column_config={"severity": st.column_config.NumberColumn(help="held-out errors explained")})

st.subheader("Confusion on held-out data")
versions = queries.evaluations(ws)["version"].tolist()
production = queries.alias(ws, "production")
if not versions:
    st.caption("No version has been evaluated yet.")
else:
    version = st.selectbox("Version", versions,
                           index=versions.index(production) if production in versions else len(versions) - 1,
                           format_func=lambda v: f"{v} (production)" if v == production else v)
    matrix = queries.confusion(ws, version)
    fig = px.imshow(matrix, text_auto=True, color_continuous_scale="Blues", aspect="auto",
                    labels={"x": "predicted", "y": "label", "color": "examples"})
    fig.update_layout(height=max(360, 40 * len(matrix) + 160), margin={"t": 20})
    st.plotly_chart(fig)
