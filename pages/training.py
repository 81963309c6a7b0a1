"""Training: a run's loss and validation accuracy on one step axis, with the training doctor's interventions
marked, and runs compared overlaid."""
from datetime import datetime, timezone

import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from app.queries import shared, training as queries
from app.tables import TIMES_ARE_UTC, show

ws = shared.workspace_path()
st.title("Training")

METRICS = {"val_acc": "Validation accuracy", "val_loss": "Validation loss", "train_loss": "Training loss"}
# what the doctor found or did (core/doctor.py, core/train.py), as a person says it
EVENTS = {"nan_loss": "Loss not a number", "divergence": "Loss diverged", "plateau": "Plateau",
          "overfitting": "Overfitting", "rollback": "Rolled back", "early_stop": "Stopped early"}
EVENT_COLOR = "firebrick"

runs = queries.train_runs(ws)
if not runs:
    st.info("No training run has recorded metrics yet. Runs appear here while a cycle trains.")
    st.stop()

run = st.selectbox("Run", runs, index=len(runs) - 1)
live = queries.live_run(ws) == run
replay_note = queries.replayed(ws, run)
if replay_note:
    st.caption(replay_note)


def event_name(kind: str) -> str:
    return EVENTS.get(kind, str(kind).replace("_", " ").capitalize())


def curves_figure(data, events) -> go.Figure:
    """Loss (training, validation) on top, validation accuracy below, one shared step axis; each intervention
    is a dotted line through both panels and a marker whose hover says what the doctor found and did."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06, row_heights=[0.55, 0.45])
    for name, dash in (("train_loss", None), ("val_loss", "dash")):
        points = data.dropna(subset=[name])
        fig.add_trace(go.Scatter(x=points["step"], y=points[name], name=METRICS[name], mode="lines",
                                 line={"dash": dash}, hovertemplate="step %{x}: %{y:.4f}"), row=1, col=1)
    points = data.dropna(subset=["val_acc"])
    fig.add_trace(go.Scatter(x=points["step"], y=points["val_acc"], name=METRICS["val_acc"], mode="lines+markers",
                             hovertemplate="step %{x}: %{y:.1%}"), row=2, col=1)
    if not events.empty:
        for step in sorted(set(events["step"])):
            fig.add_vline(x=step, line_dash="dot", line_color=EVENT_COLOR, row="all", col=1)
        losses = data[["train_loss", "val_loss"]].stack()
        top = float(losses.max()) if len(losses) else 1.0
        names = [event_name(k) for k in events["kind"]]
        fig.add_trace(go.Scatter(
            x=events["step"], y=[top] * len(events), mode="markers", name="Doctor's interventions",
            marker={"symbol": "triangle-down", "size": 12, "color": EVENT_COLOR},
            customdata=list(zip(names, events["detail"].fillna(""))),
            hovertemplate="step %{x}: <b>%{customdata[0]}</b><br>%{customdata[1]}<extra></extra>"), row=1, col=1)
    fig.update_layout(height=480, margin={"t": 20, "b": 40}, legend={"orientation": "h", "y": -0.12},
                      hovermode="closest")
    fig.update_xaxes(title_text="step", row=2, col=1)
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text="validation accuracy", tickformat=".0%", range=[0, 1.02], row=2, col=1)
    return fig


@st.fragment(run_every=5 if live else None)
def curves(run_id: str, was_live: bool) -> None:
    if was_live and queries.live_run(ws) != run_id:
        st.rerun()  # training just ended: redraw the page once, without the timer
    data = queries.metric_curves(ws, run_id)
    events = queries.train_events(ws, run_id)
    read_at = f"read at {datetime.now(timezone.utc):%H:%M:%S} UTC"
    st.caption(f":material/autorenew: training now; refreshing every 5 s, {read_at}" if was_live
               else f"Data {read_at}. {TIMES_ARE_UTC}")
    st.plotly_chart(curves_figure(data, events))
    st.subheader("Doctor's interventions")
    if events.empty:
        st.caption("None in this run.")
    else:
        shown = events.assign(kind=[event_name(k) for k in events["kind"]])
        show(shown, {"step": "Step", "kind": "Intervention", "detail": "What the doctor found or did", "at": "At"},
             {"step": "count", "at": "time"},
             column_config={"What the doctor found or did": st.column_config.TextColumn(width="large")})


curves(run, live)

st.subheader("Compare runs")
chosen = st.multiselect("Runs", runs, default=runs[-2:], key="compare_runs")
metric = st.radio("Metric", list(METRICS), format_func=METRICS.get, horizontal=True, key="compare_metric")
if chosen:
    fig = go.Figure()
    for run_id in chosen:
        points = queries.metric_curves(ws, run_id).dropna(subset=[metric])
        fig.add_trace(go.Scatter(x=points["step"], y=points[metric], name=run_id, mode="lines+markers",
                                 hovertemplate=f"{run_id}, step %{{x}}: %{{y:.4f}}<extra></extra>"))
    fig.update_layout(height=360, margin={"t": 20}, xaxis_title="step", yaxis_title=METRICS[metric],
                      legend={"orientation": "h"})
    if metric == "val_acc":
        fig.update_yaxes(tickformat=".0%")
    st.plotly_chart(fig)
