"""Diagnosis: what each cycle found wrong with its parent model, and where the model confuses classes."""
import json

import pandas as pd
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
        internals = queries.diagnosis_internals(ws, cycle_id)
        error_map = internals.get("error_map")
        if error_map:
            st.subheader("Error map")
            frame = pd.DataFrame(error_map)
            frame["outcome"] = frame["correct"].map({True: "correct", False: "error"})
            fig = px.scatter(frame, x="x", y="y", color="outcome", symbol="outcome", hover_data=["label"],
                             color_discrete_map={"correct": "#c8d3e0", "error": "#d62728"})
            fig.update_layout(height=420, margin={"t": 20}, xaxis_title="", yaxis_title="")
            st.plotly_chart(fig)
            st.caption("Held-out examples in the model's embedding space (PCA); errors in red.")
        attributions = queries.attributions(ws, cycle_id)
        if not attributions.empty:
            st.subheader("Token attributions (Captum, Layer Integrated Gradients)")
            shown = attributions.head(st.slider("Examples", 1, min(50, len(attributions)),
                                                min(10, len(attributions)), key="attr_n"))
            for row in shown.itertuples():
                verdict = "correct" if row.correct else f"error (true: {row.label})"
                st.markdown(f"**{row.predicted}** · {verdict} · delta {row.delta:+.3f}")
                st.markdown(queries.token_html(json.loads(row.tokens), json.loads(row.scores)),
                            unsafe_allow_html=True)
            st.caption(f"Attributions toward the predicted class; baseline: {attributions['baseline'].iloc[0]}.")
        activations = internals.get("activations")
        if activations:
            st.subheader("Activations on failed versus passed examples")
            act = pd.DataFrame(activations)
            fig = px.bar(act, x="layer", y=["mean_passed", "mean_failed"], barmode="group",
                         labels={"value": "mean |activation|", "variable": ""})
            fig.update_layout(height=320, margin={"t": 20})
            st.plotly_chart(fig)
            if internals.get("activations_summary"):
                st.caption(internals["activations_summary"])
        heads = internals.get("heads")
        if heads:
            st.subheader("Attention-head importance for the failing classes")
            fig = px.imshow(heads["importance"], color_continuous_scale="Viridis", aspect="auto",
                            labels={"x": "head", "y": "layer", "color": "importance"})
            fig.update_layout(height=320, margin={"t": 20})
            st.plotly_chart(fig)
            st.caption(f"Head importance ranks {heads['reason']}.")
        choice = internals.get("lora_choice")
        if choice:
            st.info(f"Next training: LoRA on {choice['reason']}.")

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
