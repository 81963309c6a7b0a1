"""Training: loss and validation curves of one run, with the training doctor's interventions marked."""
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from app import queries

ws = queries.workspace_path()
st.title("Training")

runs = queries.train_runs(ws)
if not runs:
    st.info("No training run has recorded metrics yet. Runs appear here while a cycle trains.")
    st.stop()

run = st.selectbox("Run", runs, index=len(runs) - 1)
live = queries.live_run(ws) == run


@st.fragment(run_every=5 if live else None)
def curves(run_id: str, was_live: bool) -> None:
    if was_live and queries.live_run(ws) != run_id:
        st.rerun()  # training just ended: redraw the page once, without the timer
    if was_live:
        st.caption(":material/autorenew: training now; refreshing every 5 s")
    data = queries.metric_curves(ws, run_id)
    events = queries.train_events(ws, run_id)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for name, dash in (("train_loss", None), ("val_loss", "dash")):
        points = data.dropna(subset=[name])
        fig.add_trace(go.Scatter(x=points["step"], y=points[name], name=name, mode="lines",
                                 line={"dash": dash}), secondary_y=False)
    points = data.dropna(subset=["val_acc"])
    fig.add_trace(go.Scatter(x=points["step"], y=points["val_acc"], name="val_acc", mode="lines+markers"),
                  secondary_y=True)
    for event in events.itertuples():
        fig.add_vline(x=event.step, line_dash="dot", line_color="firebrick", annotation_text=event.kind,
                      annotation_position="top left")
    fig.update_layout(height=420, margin={"t": 30, "b": 40}, legend={"orientation": "h"})
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="loss", secondary_y=False)
    fig.update_yaxes(title_text="validation accuracy", secondary_y=True, range=[0, 1])
    st.plotly_chart(fig)
    st.subheader("Doctor interventions")
    if events.empty:
        st.caption("None in this run.")
    else:
        st.dataframe(events[["step", "kind", "detail", "at"]], hide_index=True)


curves(run, live)

st.subheader("Compare runs")
chosen = st.multiselect("Runs", runs, default=runs[-2:], key="compare_runs")
metric = st.radio("Metric", ["val_acc", "val_loss", "train_loss"], horizontal=True, key="compare_metric")
if chosen:
    fig = go.Figure()
    for run_id in chosen:
        points = queries.metric_curves(ws, run_id).dropna(subset=[metric])
        fig.add_trace(go.Scatter(x=points["step"], y=points[metric], name=run_id, mode="lines+markers"))
    fig.update_layout(height=360, margin={"t": 20}, xaxis_title="step", yaxis_title=metric,
                      legend={"orientation": "h"})
    st.plotly_chart(fig)
