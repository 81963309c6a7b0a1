"""Scaffolds: the production inference program, the searched archive with its lineage, A/B results with
confidence intervals, and the scaffold_adoption gates waiting for a person."""
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app import nav, tables
from app.queries import scaffolds as queries, shared
from core.scaffolds.spec import BUILTINS

ws = shared.workspace_path()
st.title("Scaffolds")

info = queries.scaffold_overview(ws)
prod = info["production"]
c1, c2, c3, c4 = st.columns(4)
c1.metric("Production scaffold", prod["id"], help=prod["name"])
c2.metric("Model", info["model_version"] or tables.EMPTY)
c3.metric("Archive", len(info["archive"]))
c4.metric("Trials", len(info["trials"]))
st.caption(f"Production runs `{prod['steps']}`")

waiting = [g for g in shared.pending_gates(ws) if g["kind"] == "scaffold_adoption"]
if waiting:
    st.warning(f"{len(waiting)} scaffold adoption gate(s) wait for a decision: gate "
               + ", ".join(str(g["id"]) for g in waiting) + ".", icon=":material/pending_actions:")
    st.page_link(nav.path("approvals"), label="Decide in Approvals", icon=":material/gavel:")

SEARCH = f"python -m core scaffolds search --workspace {ws}"
if not info["archive"]:
    st.info(
        "**No scaffold search has run yet.**\n\n"
        "A scaffold is the inference program around the model: how a text becomes a label. Besides the plain "
        "classifier it can retrieve the nearest labeled examples and blend in their votes, re-temper the "
        "scores, take a second look (an ensemble of perturbed views) where confidence is low, abstain and route "
        "to a person below a threshold, or ask an LLM.\n\n"
        "A search mutates the production scaffold into new candidates, scores each on the search part of the "
        "held-out set, then A/B-tests the best against production on examples it never saw, with a paired "
        "confidence interval. A winner becomes production only through a scaffold adoption gate, like a model "
        "promotion: you decide it in Approvals (or the gate's policy does), and the audit log records it.\n\n"
        f"Start a search (add `--budget N` for the number of new scaffolds to try):\n\n```bash\n{SEARCH}\n```\n\n"
        f"or A/B-test one you wrote: `python -m core scaffolds add --workspace {ws} --file SCAFFOLD.json`, then "
        f"`python -m core scaffolds trial --workspace {ws} --candidate ID`.")
    st.stop()


def _signed_points(value) -> str:
    return tables.EMPTY if tables.is_empty(value) else f"{100 * float(value):+.2f} pts"


def _interval(low, high) -> str:
    if tables.is_empty(low) or tables.is_empty(high):
        return tables.EMPTY
    return f"{100 * float(low):+.2f} to {100 * float(high):+.2f} pts"


st.subheader("Archive and lineage")
archive = pd.DataFrame(info["archive"])
archive["origin"] = [f"from {parent}: {op or 'mutated'}" if not tables.is_empty(parent) else
                     "built-in" if sid in BUILTINS else "added by hand"
                     for sid, parent, op in zip(archive["id"], archive["parent"], archive["operator"])]
tables.show(archive.sort_values("num"),
            {"id": "Scaffold", "name": "Name", "origin": "Made by", "steps": "Steps", "accuracy": "Search accuracy",
             "coverage": "Coverage", "guardrail_pass": "Guardrails passed", "novelty": "Novelty",
             "production": "In production", "cycle": "Search cycle", "created_at": "Created"},
            {"accuracy": "percent", "coverage": "percent", "guardrail_pass": "percent", "novelty": "number",
             "cycle": "count", "created_at": "time"},
            column_config={"Steps": st.column_config.TextColumn(width="large")})
st.caption(f"Scores on the search part of the held-out set with the production model "
           f"{info['model_version'] or tables.EMPTY}; \"–\": not scored on it yet. {tables.TIMES_ARE_UTC}")
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
                             customdata=scored[["steps", "origin"]].to_numpy(),
                             hovertemplate="%{text}: %{y:.2%}<br>%{customdata[0]}<br>%{customdata[1]}<extra></extra>",
                             marker={"size": [14 if p else 8 for p in scored["production"]]}))
    fig.update_layout(xaxis_title="scaffold (creation order)", yaxis_title="search accuracy", height=340,
                      margin={"t": 20, "b": 40}, yaxis_tickformat=".0%")
    st.plotly_chart(fig)

st.subheader("A/B tests")
if not info["trials"]:
    st.caption(f"No A/B test yet: `{SEARCH}` ends with one.")
else:
    trials = pd.DataFrame(info["trials"]).sort_values("cycle", ascending=False)
    trials["gain_text"] = trials["gain"].map(_signed_points)
    trials["interval"] = [_interval(lo, hi) for lo, hi in zip(trials["ci_low"], trials["ci_high"])]
    trials["gate_text"] = [tables.EMPTY if tables.is_empty(g) else f"gate {int(g)}: {s}"
                           for g, s in zip(trials["gate"], trials["gate_status"])]
    trials["state"] = [f"{status} (at {stage})" if status != "done" else status
                       for status, stage in zip(trials["status"], trials["stage"])]
    tables.show(trials, {"cycle": "Cycle", "candidate": "Candidate", "production": "Against", "model_version": "Model",
                         "production_accuracy": "Production accuracy", "candidate_accuracy": "Candidate accuracy",
                         "gain_text": "Gain", "interval": "95% CI of the gain", "p_value": "p-value",
                         "passed": "Checks passed", "state": "Cycle status", "gate_text": "Adoption gate"},
                {"cycle": "count", "production_accuracy": "percent", "candidate_accuracy": "percent",
                 "p_value": "number"})
    done = trials.dropna(subset=["gain"]).sort_values("cycle")
    if len(done):
        fig = go.Figure(go.Scatter(
            x=[f"cycle {c}: {k}" for c, k in zip(done["cycle"], done["candidate"])], y=done["gain"], mode="markers",
            error_y={"type": "data", "symmetric": False, "array": done["ci_high"] - done["gain"],
                     "arrayminus": done["gain"] - done["ci_low"]},
            hovertemplate="%{x}: gain %{y:+.2%}<extra></extra>"))
        fig.add_hline(y=0, line_dash="dot")
        fig.update_layout(yaxis_title="accuracy gain over production (95% CI)", height=300, margin={"t": 20, "b": 40},
                          yaxis_tickformat="+.1%")
        st.plotly_chart(fig)
    for t in info["trials"][::-1][:5]:
        st.caption(f"cycle {t['cycle']}: " + "; ".join(t["reasons"] or [f"stage {t['stage']}"]))

st.subheader("Re-tests after promotions")
if not info["retests"]:
    st.caption("No promotion yet: after each one, the production scaffold is re-tested against the plain model.")
else:
    retests = pd.DataFrame(info["retests"]).sort_values("cycle", ascending=False)
    retests["gain_text"] = retests["gain"].map(_signed_points)
    retests["verdict"] = [s if isinstance(s, str) else ("the plain model is better: the daemon tries it at the "
                                                         "scaffold_adoption gate" if b else "the scaffold holds")
                          for s, b in zip(retests["skipped"], retests["plain_better"])]
    tables.show(retests, {"cycle": "Promoted in cycle", "model_version": "Model", "production": "Scaffold",
                          "production_accuracy": "Scaffold accuracy", "plain_accuracy": "Plain accuracy",
                          "gain_text": "Plain - scaffold", "p_value": "p-value", "verdict": "Verdict"},
                {"cycle": "count", "production_accuracy": "percent", "plain_accuracy": "percent",
                 "p_value": "number"})

if info["adoptions"]:
    st.subheader("Adoptions")
    tables.show(pd.DataFrame(info["adoptions"]).sort_values("id", ascending=False),
                {"id": "Adoption", "at": "When", "scaffold_id": "Scaffold", "previous": "Replaced",
                 "cycle_id": "Cycle", "actor": "By", "reason": "Reason"},
                {"at": "time", "cycle_id": "count"},
                column_config={"Reason": st.column_config.TextColumn(width="large")})
