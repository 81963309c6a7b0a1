"""Models: the lineage of every version as a graph with the aliases on it, the versions for people, one version's
detail (what it was trained on, how each class fares, how it drifted from its parent), the alias history, and
rollback.

Rollback goes through core.actions.rollback as the signed-in approver, and only to a version that was
production before (core.actions.rollback_targets).
"""
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app import session
from app.queries import models as queries, shared
from app.tables import TIMES_ARE_UTC, is_empty, percent, show, unpack_json, when
from core.auth import AuthError
from core.store import StoreConflict

ws = shared.workspace_path()
st.title("Models")

versions = queries.versions(ws)
if versions.empty:
    st.info(f"No model version yet: the first cycle trains one (`python -m core evolve --workspace {ws}`).")
    st.stop()
st.caption(TIMES_ARE_UTC)

ALIAS_COLORS = {"production": "#2e7d32", "candidate": "#ef6c00"}
WAS_PRODUCTION, NEVER_PRODUCTION = "#5c85d6", "#9e9e9e"
LONG_TEXT = st.column_config.TextColumn(width="large")


def roll_back() -> None:
    """Form callback: the signed-in approver points production at a version that was production before."""
    from core import actions, registry  # imports torch: pay for it only when someone rolls back
    from core.errors import ModelIntegrityError

    version = st.session_state["rollback_version"]
    try:
        who = session.acting()
        previous = actions.rollback(shared.workspace(ws), who, version)
    except (AuthError, registry.NoModelError, ModelIntegrityError, StoreConflict, ValueError, KeyError) as err:
        st.session_state["models_flash"] = ("error", f"Rollback refused: {err}")
    else:
        st.session_state["models_flash"] = ("success", f"production: {previous or '-'} → {version} (by {who.name})")
    shared.clear()


flash = st.session_state.pop("models_flash", None)
if flash:
    (st.success if flash[0] == "success" else st.error)(flash[1])

aliases = queries.aliases(ws)
cols = st.columns(max(1, len(aliases)))
for col, row in zip(cols, aliases.itertuples()):
    col.metric(row.name, row.version or "-", help=f"moved {when(row.updated_at)} UTC")


# -- lineage ---------------------------------------------------------------------------------------------------------
def parent(v) -> str | None:
    return None if is_empty(v.parent_version) else v.parent_version


def cycle_of(v) -> int | None:
    return None if is_empty(v.cycle_id) else int(v.cycle_id)


def lanes(lineage) -> dict[str, int]:
    """A row per line of descent: a version continues its parent's row unless a sibling took it first."""
    lane, taken = {}, set()
    for v in lineage.itertuples():
        parent_ = parent(v)
        if parent_ in lane and parent_ not in taken:
            lane[v.version] = lane[parent_]
            taken.add(parent_)
        else:
            lane[v.version] = max(lane.values(), default=-1) + 1
    return lane


def node_hover(v) -> str:
    lines = [f"<b>{v.version}</b>" + (f" ({', '.join(v.aliases)})" if v.aliases else "")]
    if cycle_of(v) is not None:
        lines.append(f"trained in cycle {cycle_of(v)} ({v.cycle_kind}, {v.cycle_status})"
                     + (f" from {parent(v)}" if parent(v) else ""))
    lines += v.gates or ["no gate"]
    if not is_empty(v.gate_accuracy):
        lines.append(f"expected on traffic {percent(v.gate_accuracy)} ({int(v.gate_n)} probe rows)"
                     if v.gate_basis == "traffic" else
                     f"gate estimate {percent(v.gate_accuracy)} on {int(v.gate_n)} untouched rows")
    lines.append(f"created {when(v.created_at)} UTC")
    return "<br>".join(lines)


def lineage_figure(lineage) -> go.Figure:
    """Versions by number left to right, one row per line of descent; an arrow from each version to its parent,
    labelled with the cycle that trained it; the aliases written on the versions they point at."""
    lane = lanes(lineage)
    x = {v.version: v.num for v in lineage.itertuples()}
    fig = go.Figure()
    for v in lineage.itertuples():
        if parent(v) in x:
            fig.add_annotation(x=x[parent(v)], y=-lane[parent(v)], ax=x[v.version], ay=-lane[v.version],
                               xref="x", yref="y", axref="x", ayref="y", showarrow=True, arrowhead=3,
                               arrowsize=1.2, arrowwidth=1.5, arrowcolor="#757575", standoff=14, startstandoff=14)
    edges = [v for v in lineage.itertuples() if parent(v) in x and cycle_of(v) is not None]
    if edges:  # the cycle on each edge, with its gates on hover
        fig.add_trace(go.Scatter(
            x=[(x[parent(v)] + x[v.version]) / 2 for v in edges],
            y=[-(lane[parent(v)] + lane[v.version]) / 2 + 0.12 for v in edges],
            mode="text", text=[f"cycle {cycle_of(v)}" for v in edges], textfont={"size": 11, "color": "#616161"},
            hovertext=["<br>".join([f"cycle {cycle_of(v)}: {parent(v)} → {v.version}"] + (v.gates or []))
                       for v in edges], hoverinfo="text", showlegend=False, name="cycles"))
    colors = [next((ALIAS_COLORS[a] for a in ("production", "candidate") if a in v.aliases),
                   WAS_PRODUCTION if v.was_production else NEVER_PRODUCTION) for v in lineage.itertuples()]
    fig.add_trace(go.Scatter(
        x=lineage["num"], y=[-lane[v] for v in lineage["version"]], mode="markers+text", name="versions",
        marker={"size": 26, "color": colors, "line": {"width": 1, "color": "white"}},
        text=[f"<b>{v.version}</b>" + "".join(f"<br>{a}" for a in v.aliases) for v in lineage.itertuples()],
        textposition="bottom center", hovertext=[node_hover(v) for v in lineage.itertuples()], hoverinfo="text",
        showlegend=False))
    depth = max(lane.values(), default=0)
    # the nodes carry their version's name: tick labels under them would say it twice
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False,
                     range=[lineage["num"].min() - 0.6, lineage["num"].max() + 0.6])
    fig.update_yaxes(visible=False, range=[-depth - 0.8, 0.5])
    fig.update_layout(height=180 + 70 * depth, margin={"t": 10, "b": 30, "l": 10, "r": 10}, hovermode="closest")
    return fig


lineage = queries.lineage(ws)
st.subheader("Lineage")
st.caption("Each arrow points from a version to the version it was trained from. Green: production now; orange: "
           "the candidate; blue: production before; grey: never production. Hover a version for its cycle and "
           "gates.")
st.plotly_chart(lineage_figure(lineage), key="lineage_chart")

# -- versions --------------------------------------------------------------------------------------------------------
st.subheader("Versions")
table = unpack_json(versions, "rows_by_source", prefix="from:")
sources = [c for c in table.columns if c.startswith("from:")]
known = versions["rows_by_source"] != "{}"  # an old lineage does not say; one that does gave 0 rows from the rest
table.loc[known, sources] = table.loc[known, sources].fillna(0)
table["aliases"] = table["version"].map(dict(zip(lineage["version"], lineage["aliases"])))
show(table.sort_values("num", ascending=False),
     {"version": "Version", "aliases": "Aliases now", "created_at": "Created", "cycle_id": "Cycle",
      "parent_version": "Parent", "train_rows": "Training rows",
      **{c: f"From {c.split(':', 1)[1]}" for c in sources},
      "steps": "Steps", "best_val_acc": "Best validation accuracy", "gate_accuracy": "Gate estimate",
      "base_model": "Base model"},
     {"created_at": "time", "cycle_id": "count", "train_rows": "count", "steps": "count",
      "best_val_acc": "percent", "gate_accuracy": "percent", **{c: "count" for c in sources}},
     column_config={"Gate estimate": st.column_config.TextColumn(
         help="accuracy on the held-out rows only the gates read")})

# -- one version -----------------------------------------------------------------------------------------------------
st.subheader("Version detail")
names = list(versions.sort_values("num", ascending=False)["version"])
on = dict(zip(lineage["version"], lineage["aliases"]))
chosen = st.selectbox("Show version", names, key="detail_version",
                      format_func=lambda v: f"{v} ({', '.join(on[v])})" if on.get(v) else v)
detail = queries.version_detail(ws, chosen)
left, right = st.columns(2)
with left:
    st.markdown(f"**Training data of {chosen} by source**")
    by_source = detail["rows_by_source"]
    if by_source:
        fig = go.Figure(go.Bar(x=list(by_source.values()), y=list(by_source), orientation="h",
                               text=[f"{n:,}" for n in by_source.values()], textposition="auto",
                               hovertemplate="%{y}: %{x:,} rows<extra></extra>"))
        fig.update_layout(height=80 + 40 * len(by_source), margin={"t": 10, "b": 30}, xaxis_title="training rows")
        st.plotly_chart(fig, key="detail_sources")
    else:
        st.caption("Its lineage does not say where its training rows came from.")
    lin = detail["lineage"]
    layers = lin.get("lora_layers")
    st.caption(f"{lin.get('train_rows', '–')} training rows, {lin.get('steps', '–')} steps; LoRA on layers "
               f"{', '.join(map(str, layers)) if isinstance(layers, list) else layers or '–'}"
               + (f" ({lin['lora_reason']})" if lin.get("lora_reason") else "")
               + (f"; stopped early: {lin['early_stop']}" if lin.get("early_stop") else ""))
with right:
    per_class = detail["per_class"]
    if per_class.empty:
        st.markdown(f"**Per-class recall of {chosen}**")
        st.caption("Not evaluated on the gate rows yet.")
    else:
        st.markdown(f"**Per-class recall of {chosen}**, worst first (gate rows; accuracy "
                    f"{percent(detail['accuracy'])} on {detail['n']})")
        ordered = per_class.iloc[::-1]  # a horizontal bar chart draws its first bar at the bottom
        fig = go.Figure(go.Bar(x=ordered["recall"], y=ordered["label"], orientation="h",
                               customdata=ordered["support"],
                               hovertemplate="%{y}: %{x:.1%} of %{customdata} rows<extra></extra>"))
        fig.update_layout(height=80 + 32 * len(per_class), margin={"t": 10, "b": 30})
        fig.update_xaxes(range=[0, 1], tickformat=".0%", title_text="recall")
        st.plotly_chart(fig, key="detail_recall")
        show(per_class, {"label": "Class", "recall": "Recall", "precision": "Precision", "support": "Rows"},
             {"recall": "percent", "precision": "percent", "support": "count"})

drift = detail["drift"]
if drift is None:
    st.caption(f"No drift report for {chosen}: " + ("it was not trained against a production version."
                                                   if is_empty(detail["parent"]) else "its cycle did not reach drift."))
else:
    report = drift["report"]
    held, ref, guard = report.get("heldout", {}), report.get("reference"), report.get("guardrails")
    verdict = report.get("verdict", "–")
    with st.expander(f"Drift of {drift['candidate']} from {drift['production']} (cycle {drift['cycle_id']}): "
                     f"{verdict}", expanded=verdict != "pass"):
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("Held-out flip rate", percent(held.get("flip_rate"), 1),
                  help=f"{held.get('flips_fixed', 0)} flips fixed, {held.get('flips_broken', 0)} broken, "
                       f"of {held.get('n', 0)} rows")
        c2.metric("KL divergence", f"{held.get('kl', 0.0):.3f}", help="production's output distribution against "
                                                                     "the candidate's, averaged over rows")
        c3.metric("Calibration error change", f"{held.get('ece_change', 0.0):+.3f}",
                  help=f"expected calibration error {held.get('ece_production', 0.0):.3f} → "
                       f"{held.get('ece_candidate', 0.0):.3f}")
        c4.metric("Guardrails passed", percent(guard["pass_rate_candidate"], 0) if guard else "none defined",
                  help=f"production passed {percent(guard['pass_rate_production'], 0)}" if guard else None)
        st.markdown("\n".join(f"- {reason}" for reason in report.get("reasons", [])))
        if ref:
            st.caption(f"Recent traffic: {ref['n']} texts, flip rate {percent(ref['flip_rate'], 1)}, "
                       f"KL divergence {ref['kl']:.3f}")
        change = held.get("recall_change") or {}
        if change:
            frame = pd.DataFrame({"label": list(change), "change": list(change.values())}).sort_values("change")
            frame["change"] = [f"{100 * c:+.1f} points" for c in frame["change"]]
            st.markdown("**Recall change by class** (candidate minus production, held-out rows)")
            show(frame, {"label": "Class", "change": "Recall change"})
        for title, rows, columns in (
                ("Held-out predictions that flipped", held.get("flipped"),
                 {"text": "Text", "label": "True class", "production": "Production said",
                  "candidate": "Candidate says"}),
                ("Recent traffic that flipped", (ref or {}).get("flipped"),
                 {"text": "Text", "production": "Production said", "candidate": "Candidate says"}),
                ("Guardrail probes the candidate fails", (guard or {}).get("failures"),
                 {"text": "Text", "expected": "Expected", "candidate": "Candidate says", "note": "Note"})):
            if rows:
                st.markdown(f"**{title}**")
                show(pd.DataFrame(rows), columns, column_config={"Text": LONG_TEXT}, row_height=60)

# -- alias history ---------------------------------------------------------------------------------------------------
st.subheader("Alias history")
show(queries.alias_history(ws).sort_values("id", ascending=False),
     {"id": "#", "at": "At", "name": "Alias", "version": "Points at", "previous": "Pointed at before",
      "actor": "By", "reason": "Reason"}, {"id": "count", "at": "time"},
     column_config={"Reason": LONG_TEXT})

st.subheader("Roll back production")
production = shared.alias(ws, "production")
targets = queries.rollback_targets(ws)
if not targets:
    st.caption("No version to roll back to: only a version that was production before, and is not now, can be.")
elif who := session.actor():
    with st.form("rollback"):
        st.selectbox("Version", targets, index=len(targets) - 1, key="rollback_version",
                     help=f"production is {production or '-'}; only versions that were production before are "
                          "offered; their files are checked before the alias moves")
        st.form_submit_button("Roll back", on_click=roll_back, key="rollback_submit")
