"""Diagnosis: what each cycle found wrong with its parent model, where its errors cluster, and where the model
confuses classes."""
import html
import json

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from app import tables
from app.queries import diagnosis as queries, shared

ws = shared.workspace_path()
st.title("Diagnosis")

CORRECT_COLOUR, UNCLUSTERED_COLOUR = "#c8d3e0", "#7f7f7f"
CLUSTER_COLOURS = px.colors.qualitative.Set1


def example_markdown(text, attributed: pd.DataFrame, example_id=None, label=None, predicted=None) -> str:
    """One held-out example: its tokens in Captum's colours when the diagnosis attributed it, else its text."""
    if example_id is not None and example_id in attributed.index:
        a = attributed.loc[example_id]
        return (f"true **{a['label']}** · predicted **{a['predicted']}** · delta {a['delta']:+.3f}<br>"
                + queries.token_html(json.loads(a["tokens"]), json.loads(a["scores"])))
    verdict = f"true **{label}** · predicted **{predicted}**<br>" if label else ""
    return verdict + html.escape(str(text))


def pick_cluster():
    """A click on the error map selects the clicked point's group in the examples' radio."""
    points = st.session_state["error_map"].selection.points
    groups = st.session_state.get("error_map_groups", [])
    if points and points[0].get("curve_number", -1) < len(groups):
        group = groups[points[0]["curve_number"]]
        if group in st.session_state.get("error_cluster_options", []):
            st.session_state["error_cluster"] = group


def finding_panel(row, attributed: pd.DataFrame, report: dict | None) -> None:
    """The selected finding's detail: what it made this cycle's curation do, its examples in full (with token
    colours where attributed) and the rest of what the diagnosis stored, as words."""
    d = row["detail"]
    st.markdown(f"**{row['badge']} · {row['kind_label']}: {row['subject']}**  \n{row['action']}")
    if row["trend"] == "fixed":
        st.caption("The previous diagnosis found this; this one does not.")
        return
    effects = queries.finding_effects(row["kind"], row["subject"], d, report)
    if effects:
        st.markdown("What it made this cycle do: " + "; ".join(effects) + ".")
    if d.get("terms"):
        st.markdown("Distinctive terms: " + ", ".join(f"`{t}`" for t in d["terms"]))
    if d.get("labels"):
        st.markdown("True classes: " + ", ".join(f"{k} ({v})" for k, v in d["labels"].items())
                    + (" · predicted as: " + ", ".join(f"{k} ({v})" for k, v in d.get("predicted", {}).items())
                       if isinstance(d.get("predicted"), dict) else ""))
    if d.get("recall") is not None:
        st.markdown(f"Recall {tables.percent(d['recall'], 1)}, precision {tables.percent(d.get('precision'), 1)}, "
                    f"{d.get('misses', 0)} missed of {d.get('support', 0)} examples.")
    if d.get("rests_on"):
        st.markdown("Rests on: " + queries.rests_on_words(d["rests_on"]) + ".")
    if d.get("reason"):
        st.markdown(f"The {str(d.get('gate', '')).replace('_', ' ')} gate of cycle {d.get('cycle', '')} rejected "
                    f"its candidate: {d['reason']}.")
    # Examples and their ids are stored in the same order (a pair's example_ids, a cluster's members).
    ids = d.get("example_ids") or [m["example_id"] for m in d.get("members") or []]
    for i, text in enumerate((d.get("examples") or [])[:5]):
        st.markdown(example_markdown(text, attributed, ids[i] if i < len(ids) else None), unsafe_allow_html=True)


evolve = shared.cycles(ws).query("kind == 'evolve'")
if evolve.empty:
    st.info("No evolution cycle yet: the baseline cycle trains on the labeled seed without a diagnosis. "
            f"The first `python -m core evolve --workspace {ws}` diagnoses the baseline before it curates data.")
else:
    parents = dict(zip(evolve["id"].astype(int), evolve["parent_version"]))
    ids = list(parents)
    cycle_id = st.selectbox("Cycle", ids, index=len(ids) - 1, format_func=lambda c: f"cycle {c} (parent {parents[c]})")
    findings = queries.findings(ws, cycle_id)
    attributions = queries.attributions(ws, cycle_id)
    attributed = attributions.set_index("example_id") if len(attributions) else pd.DataFrame()
    st.subheader("Findings")
    if findings.empty:
        st.caption("This cycle has no findings (yet, or its parent made no held-out errors).")
    else:
        counts = findings["trend"].value_counts()
        st.markdown(" · ".join(f"{queries.TREND_BADGES[t]}: **{counts[t]}**" for t in queries.TREND_BADGES
                               if t in counts)
                    + "  \nCompared with the previous diagnosis: *new* findings appeared in this one, *persisting* "
                      "ones were there before too, *fixed* ones were there before and are gone.")
        event = tables.show(findings, {"rank": "Rank", "badge": "Trend", "kind_label": "Type", "subject": "Finding",
                                       "severity": "Errors explained", "evidence": "Evidence",
                                       "action": "Next action"},
                            {"severity": "count"}, on_select="rerun", selection_mode="single-row", key="findings",
                            column_config={"Errors explained": st.column_config.TextColumn(
                                help="held-out errors (or production corrections) the finding explains")})
        picked = event.selection.rows if event and event.selection else []
        with st.container(border=True):
            finding_panel(findings.iloc[picked[0] if picked else 0], attributed, shared.yield_report(ws, cycle_id))
            if not picked:
                st.caption("Select a row to see that finding's evidence; the top finding is shown.")

    emap = queries.error_map(ws, cycle_id)
    internals = queries.diagnosis_internals(ws, cycle_id)
    if len(emap):
        st.subheader("Error map")
        clusters = [g for g in dict.fromkeys(findings.loc[findings["kind"] == "error_cluster", "subject"])
                    if g in set(emap["group"])] if len(findings) else []
        groups = clusters + [g for g in (queries.UNCLUSTERED, queries.CORRECT) if g in set(emap["group"])]
        colours = {g: CLUSTER_COLOURS[i % len(CLUSTER_COLOURS)] for i, g in enumerate(clusters)}
        colours.update({queries.UNCLUSTERED: UNCLUSTERED_COLOUR, queries.CORRECT: CORRECT_COLOUR})
        fig = go.Figure()
        for group in groups:
            part = emap[emap["group"] == group]
            name = group if group in (queries.UNCLUSTERED, queries.CORRECT) else f"cluster: {group}"
            fig.add_trace(go.Scatter(
                x=part["x"], y=part["y"], mode="markers", name=name,
                marker={"color": colours[group], "size": 7 if group == queries.CORRECT else 11,
                        "line": {"width": 0 if group == queries.CORRECT else 1, "color": "white"}},
                customdata=part[["terms", "label", "predicted", "hover"]].fillna("–").to_numpy(),
                hovertemplate=(f"<b>{html.escape(name)}</b><br>terms: %{{customdata[0]}}<br>true %{{customdata[1]}}"
                               " · predicted %{customdata[2]}<br>%{customdata[3]}<extra></extra>")))
        fig.update_layout(height=440, margin={"t": 20}, xaxis_title="", yaxis_title="", legend_title_text="",
                          xaxis={"showticklabels": False}, yaxis={"showticklabels": False})
        options = [g for g in groups if g != queries.CORRECT]
        st.session_state["error_map_groups"] = groups
        st.session_state["error_cluster_options"] = options
        st.plotly_chart(fig, key="error_map", on_select=pick_cluster, selection_mode="points")
        st.caption("Held-out examples (the selection part) in the model's embedding space, projected to 2-D; each "
                   "error cluster in its own colour, correct predictions in grey. Click an error to read its "
                   "cluster's examples below.")
        if options:
            if st.session_state.get("error_cluster") not in options:
                st.session_state["error_cluster"] = options[0]
            chosen = st.radio("Examples of", options, key="error_cluster", horizontal=True,
                              format_func=lambda g: g if g == queries.UNCLUSTERED else f"cluster: {g}")
            members = emap[emap["group"] == chosen]
            with st.container(border=True):
                for row in members.head(10).itertuples():
                    st.markdown(example_markdown(row.text, attributed, row.example_id, row.label, row.predicted),
                                unsafe_allow_html=True)
                st.caption(f"{len(members)} error(s); tokens coloured by Captum's attribution toward the predicted "
                           "class where the diagnosis attributed the example (green toward, red away).")

    if len(attributions):
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
        act = pd.DataFrame(activations).rename(columns={"mean_passed": "passed examples",
                                                        "mean_failed": "failed examples"})
        fig = px.bar(act, x="layer", y=["passed examples", "failed examples"], barmode="group",
                     labels={"value": "mean |activation|", "variable": "", "layer": "layer"})
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
    if choice and "layers" in shared.workspace(ws).config().diagnose.acts:
        st.info(f"Next training: LoRA on {choice['reason']}.")
    elif choice:
        st.caption(f"The analysis would put LoRA on {choice['reason']}; training keeps the configured top layers "
                   "(`diagnose.acts` leaves out \"layers\": on Banking77 its choice cost 0.26 points, bench/README).")

st.subheader("Confusion on held-out data")
versions = shared.evaluations(ws)["version"].tolist()
production = shared.alias(ws, "production")
if not versions:
    st.caption("No version has been evaluated yet.")
else:
    version = st.selectbox("Version", versions,
                           index=versions.index(production) if production in versions else len(versions) - 1,
                           format_func=lambda v: f"{v} (production)" if v == production else v)
    matrix = queries.confusion(ws, version)
    fig = px.imshow(matrix, text_auto=True, color_continuous_scale="Blues", aspect="auto",
                    labels={"x": "predicted class", "y": "true class", "color": "examples"})
    fig.update_layout(height=max(360, 40 * len(matrix) + 160), margin={"t": 20})
    st.plotly_chart(fig)
    pairs = queries.confused_pairs(ws, version)
    if pairs.empty:
        st.caption(f"{version} confuses no pair of classes on the held-out data.")
    else:
        st.markdown("**Most confused pairs**")
        tables.show(pairs, {"label": "True class", "predicted": "Predicted as", "n": "Examples",
                            "share": "Share of the true class"}, {"n": "count", "share": "percent"})
