"""Approvals: the gates waiting for a person, the evidence to decide them, and the decisions so far.

Decisions go through core.actions.decide_gate as the signed-in approver (app/session.py); viewers see the
evidence without the controls. A promotion or scaffold gate whose checks failed has no plain Approve: only
the separate override control, which needs a written reason.
"""
import pandas as pd
import streamlit as st

from app import nav, session, tables
from app.queries import approvals as queries, shared
from core import actions, traffic as traffic_rows
from core.auth import AuthError
from core.store import StoreConflict

ws = shared.workspace_path()
st.title("Approvals")
st.caption(tables.TIMES_ARE_UTC)


def decide(gate_id: int, approved: bool, override: bool = False) -> None:
    """Form callback: runs before the page redraws, so the page below already shows the outcome."""
    key = f"override_reason_{gate_id}" if override else f"comment_{gate_id}"
    comment = st.session_state.get(key, "").strip()
    try:
        who = session.acting()
        if override and not comment:
            raise ValueError("an override needs a written reason: say why the failed checks do not matter here")
        result = actions.decide_gate(shared.workspace(ws), who, gate_id, approved, comment, override=override)
    except (AuthError, StoreConflict, ValueError, KeyError) as err:
        st.session_state["approvals_flash"] = ("error", f"Gate {gate_id}: {err}")
    else:
        how = " as an override of its failed checks" if result["override"] else ""
        st.session_state["approvals_flash"] = (
            "success", f"Gate {gate_id} {result['status']} by {who.name}{how}. The engine acts on it at its next "
                       "step (an `evolve --wait` picks it up; otherwise run "
                       f"`python -m core resume --workspace {ws}`).")
    shared.clear()


def _interval(est: dict | None) -> str:
    return tables.EMPTY if not est else tables.percent(est["accuracy"])


def _ci(est: dict | None) -> str | None:
    """The interval and what the figure rests on (traffic.rests_on)."""
    if not est:
        return None
    text = (f"95% CI {tables.percent(est['ci_low'])} to {tables.percent(est['ci_high'])}, "
            f"{traffic_rows.rests_on(est)}")
    if "gate_rows" in est and not est.get("labeled"):
        text += " (without them a version's gain over its parent tends to read short: docs/gate.md)"
    return text


def change(value) -> str:
    """A difference of two rates, signed, in percentage points."""
    return tables.EMPTY if tables.is_empty(value) else f"{100 * float(value):+.1f} pts"


FORGETTING = {"label": "Class", "forgotten": "Forgotten", "n": "Gate rows", "broken": "Broken", "fixed": "Fixed",
              "recall_production": "Recall before", "recall_candidate": "Recall after", "p_adjusted": "Adjusted p",
              "flipped_to": "Now predicted as"}
RECALL = {"label": "Class", "support": "Support", "production_recall": "Production recall",
          "candidate_recall": "Candidate recall", "change": "Change"}
FLIPPED = {"text": "Text", "label": "True label", "production": "Production said", "candidate": "Candidate says"}
GUARDRAIL_FAILURES = {"text": "Probe", "expected": "Expected", "candidate": "Candidate says", "note": "Note"}


def promotion_evidence(gate: dict, checks: dict) -> None:
    cand, prod = checks.get("candidate"), checks.get("production")
    if not isinstance(cand, dict):  # a gate from before gates had intervals
        cand = {"accuracy": checks["candidate_accuracy"], "ci_low": 0.0, "ci_high": 1.0, "n": 0}
    gain, detail = checks.get("gain"), checks.get("gain_detail") or {}
    traffic = checks.get("traffic") or {}
    shown_cand, shown_prod = traffic.get("candidate") or cand, traffic.get("production") or prod
    where = "expected on traffic" if traffic.get("candidate") else "on the gate rows"
    c1, c2, c3 = st.columns(3)
    c1.metric(f"Candidate {gate['candidate'] or ''}, {where}", _interval(shown_cand), help=_ci(shown_cand))
    c2.metric(f"Production {gate['production'] or ''}, {where}", _interval(shown_prod), help=_ci(shown_prod))
    decided_on = checks.get("decided_on") or "gate rows"
    deciding = checks.get("decision_gain") or detail
    c3.metric(f"Gain on {decided_on}", tables.EMPTY if gain is None else f"{100 * gain:+.2f} pts",
              help=(f"95% CI {100 * deciding['ci_low']:+.2f} to {100 * deciding['ci_high']:+.2f} pts; "
                    if deciding else "") + f"must beat {100 * checks['min_gain']:+.2f} pts")
    if checks.get("traffic_gain"):
        t = checks["traffic_gain"]
        st.caption(f"Decided on traffic labels: {t['labeled']} of the {t['disagreements']} probe rows where the two "
                   f"models disagree were labeled by people (drawn at random, each weighted by its probability), of "
                   f"{t['n']} probe rows; on the gate rows the gain is {change(detail.get('gain'))}.")
    elif decided_on != "gate rows" and deciding:
        st.caption(f"Decided on the gate rows blended with the traffic estimates: the held-out rows resemble traffic "
                   f"{deciding['resemblance']:.2f}, so the gate rows' gain ({change(deciding['gate_rows_gain'])}) "
                   f"counts {deciding['resemblance']:.2f} and the probe's label-free gain "
                   f"({change(deciding['traffic_estimate_gain'])}) the rest.")
    if checks.get("decision_lower_bound") is not None and checks.get("promotion_confidence", 0.5) > 0.5:
        free = checks.get("label_free_gain")
        st.caption(f"At {checks['promotion_confidence']:.0%} the gain is at least "
                   f"{change(checks['decision_lower_bound'])}; where that does not beat the margin, the probe's "
                   f"label-free gain ({change(free['gain']) if free else 'none measured'}, read where the two models "
                   f"answer differently) must.")
    if checks.get("resemblance"):
        st.caption("Held-out rows resemble traffic " + traffic_rows.describe(checks["resemblance"]))
    st.caption(" · ".join(filter(None, [f"Candidate: {_ci(shown_cand)}" if _ci(shown_cand) else None,
                                        f"production: {_ci(shown_prod)}" if _ci(shown_prod) else None])))
    st.caption("The gate rows are the part of the held-out set no training, checkpoint choice or diagnosis has "
               "read; the decision compares both models on them. "
               + ("The figures above carry the gate rows' accuracy over to traffic through the confidences on "
                  f"a probe of traffic nothing trains on (gate rows alone: candidate {_interval(cand)}, "
                  f"production {_interval(prod)})." if traffic.get("candidate") else ""))
    forgetting = checks.get("forgetting") or {}
    if forgetting:
        st.markdown(f"**Forgetting guard**: {forgetting['test']}, alpha {forgetting['alpha']:g} over "
                    f"{forgetting['classes_tested']} classes; a class is forgotten when its broken answers stand "
                    f"out and its recall drops by more than {forgetting['max_recall_drop']:.2f}. "
                    f"{forgetting['broken']} of production's {forgetting['production_right']} correct gate answers "
                    "broke in all.")
        shown = pd.DataFrame(forgetting.get("flagged", []) + forgetting.get("closest", []))
        if len(shown):
            shown["p_adjusted"] = shown["p_adjusted"].map(lambda p: f"{p:.3f}")
            shown["flipped_to"] = shown["flipped_to"].map(lambda d: ", ".join(f"{k} ×{v}" for k, v in d.items()))
            tables.show(shown, FORGETTING, {"recall_production": "percent", "recall_candidate": "percent"})
    st.markdown(f"**Per-class recall on the gate rows**: production {gate['production'] or ''} → candidate "
                f"{gate['candidate'] or ''}, worst change first")
    recall = queries.recall_comparison(ws, gate["candidate"], gate["production"]).assign(
        change=lambda f: f["change"].map(change))
    tables.show(recall, RECALL, {"support": "count", "production_recall": "percent", "candidate_recall": "percent"})
    report = queries.drift_report(ws, gate["cycle_id"])
    if report:  # the drift check of the same cycle: which answers the promotion would change
        held = report.get("heldout", {})
        with st.expander(f"Drift: {held.get('flip_rate', 0.0):.0%} of held-out answers change "
                         f"({held.get('flips_fixed', 0)} fixed, {held.get('flips_broken', 0)} broken)"):
            drift_tables(report)
    samples_link(gate)


def samples_link(gate: dict) -> None:
    """To the Synthetic data page, filtered to this gate's cycle (the page reads `cycle` once)."""
    st.page_link(nav.path("synthetic_data"), label=f"Read the samples of cycle {gate['cycle_id']}",
                 icon=":material/dataset:", query_params={"cycle": int(gate["cycle_id"])})


def data_review_evidence(gate: dict, checks: dict) -> None:
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Kept samples", f"{checks.get('kept', 0):,}", help=f"of {checks.get('generated', 0):,} generated")
    noise, shift = checks.get("label_noise"), checks.get("class_shift")
    c2.metric("Estimated label noise", tables.EMPTY if noise is None else f"{noise:.1%}",
              help=f"limit {checks.get('max_label_noise', 1):.0%}: kept samples whose label the kNN view does "
                   "not rank first")
    c3.metric("Class-mix shift", tables.EMPTY if shift is None else f"{shift:.2f}",
              help=f"limit {checks.get('max_class_shift', 1):.2f}: total variation from the seed's class mix")
    shares = checks.get("generator_shares") or {}
    top = max(shares.items(), key=lambda kv: kv[1]) if shares else None
    c4.metric("Largest generator share", tables.EMPTY if top is None else f"{top[1]:.0%}",
              help=None if top is None else f"{top[0]}; limit {checks.get('max_generator_share', 1):.0%} "
                                            "(traffic labelers excepted)")
    executed = (shared.yield_report(ws, gate["cycle_id"]) or {}).get("sandbox")
    if executed:  # an execution check verified this curation: what it ran and why it dropped what it dropped
        st.markdown(f"**Executed** by {executed['check']}: {executed['executed']:,} candidates, "
                    f"{executed['confirmed']:,} confirmed by their execution, {executed.get('kept', 0):,} of them kept")
        dropped = pd.DataFrame(sorted(executed["dropped_by"].items(), key=lambda kv: -kv[1]), columns=["why", "n"])
        tables.show(dropped, {"why": "Dropped because", "n": "Samples"}, {"n": "count"})
    samples_link(gate)


def drift_tables(report: dict) -> None:
    held, guard = report.get("heldout", {}), report.get("guardrails") or {}
    if held.get("flipped"):
        st.markdown("**Held-out predictions that flipped**")
        tables.show(pd.DataFrame(held["flipped"]), FLIPPED, column_config={
            "Text": st.column_config.TextColumn(width="large")})
    if guard.get("failures"):
        st.markdown("**Guardrail probes the candidate fails**")
        tables.show(pd.DataFrame(guard["failures"]), GUARDRAIL_FAILURES, column_config={
            "Probe": st.column_config.TextColumn(width="large")})


def drift_evidence(gate: dict, checks: dict) -> None:
    report = queries.drift_report(ws, gate["cycle_id"]) or {}
    held, guard = report.get("heldout", {}), report.get("guardrails") or {}
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Held-out flip rate", f"{held.get('flip_rate', 0.0):.1%}",
              help=f"{held.get('flips_fixed', 0)} fixed, {held.get('flips_broken', 0)} broken")
    c2.metric("KL divergence", f"{held.get('kl', 0.0):.3f}")
    c3.metric("Calibration error change", f"{held.get('ece_change', 0.0):+.3f}")
    c4.metric("Guardrails passed", f"{guard['pass_rate_candidate']:.0%}" if guard else tables.EMPTY)
    drift_tables(report)


def scaffold_evidence(gate: dict, checks: dict) -> None:
    if "gain" not in checks:  # not written by a scaffold A/B test: show what there is
        checks_table(checks)
        return
    result = (queries.scaffold_trial(ws, gate["cycle_id"]) or {}).get("result") or {}
    prod, cand = result.get("production", {}), result.get("candidate", {})

    def acc(m: dict) -> str:
        return tables.EMPTY if m.get("accuracy") is None else f"{m['accuracy']:.4f}"

    c1, c2, c3, c4 = st.columns(4)
    c1.metric(f"Candidate scaffold {checks.get('candidate', '')}", acc(cand),
              help=f"coverage {cand.get('coverage', 0):.0%}; an abstention counts as wrong")
    c2.metric(f"Production scaffold {checks.get('production', '')}", acc(prod),
              help=f"coverage {prod.get('coverage', 0):.0%}")
    c3.metric("Gain", f"{checks['gain']:+.4f}",
              help=f"{1 - checks['alpha']:.0%} paired bootstrap CI [{checks['ci_low']:+.4f}, {checks['ci_high']:+.4f}]")
    c4.metric("McNemar p", f"{checks['p_value']:.4f}", help=f"decided by {checks['test']} at alpha {checks['alpha']:g}")
    st.markdown(f"**{checks['n']} paired held-out examples** on model {checks.get('model_version', tables.EMPTY)}: "
                f"{checks['candidate_only']} only the candidate got right, {checks['production_only']} only "
                f"production; accuracy difference CI [{checks['ci_low']:+.4f}, {checks['ci_high']:+.4f}]")
    guard_p, guard_c = checks.get("guardrail_production"), checks.get("guardrail_candidate")
    st.caption("Guardrails: none defined" if guard_p is None else
               f"Guardrails passed: production {guard_p:.0%}, candidate {guard_c:.0%}")
    st.page_link(nav.path("scaffolds"), label="Archive and lineage in Scaffolds", icon=":material/account_tree:")


def checks_table(checks: dict) -> None:
    """Checks of a shape this page does not know: one row per recorded check, its value in words."""
    rows = [(key.replace("_", " ").capitalize(), value) for key, value in checks.items()
            if key not in ("passed", "reasons")]
    if rows:
        tables.show(pd.DataFrame(rows, columns=["check", "value"]), {"check": "Check", "value": "Value"},
                    {"value": "text"})


EVIDENCE = {"promotion": promotion_evidence, "data_review": data_review_evidence, "drift_review": drift_evidence,
            "scaffold_adoption": scaffold_evidence}

flash = st.session_state.pop("approvals_flash", None)
if flash:
    (st.success if flash[0] == "success" else st.error)(flash[1])

pending = shared.pending_gates(ws)
who = session.actor()
if not pending:
    st.success("No gate waits for a decision.", icon=":material/check_circle:")
elif not queries.approvers(ws):
    st.warning("This workspace has no approvers yet, so no one can decide here. Add one with "
               f"`python -m core users add NAME --role approver --workspace {ws}`.")

for gate in pending:
    gid, checks = int(gate["id"]), gate["checks"]
    # approving it is an override: core.actions refuses a plain approval of these
    needs_override = gate["kind"] in actions.HARD_GATES and not checks.get("passed", True)
    st.subheader(f"Gate {gid} · cycle {gate['cycle_id']} · {tables.gate_name(gate['kind'])}")
    st.caption(f"policy {gate['policy']} · opened {tables.when(gate['created_at'])} · rejected "
               f"automatically if undecided by {tables.when(gate['deadline'])}")
    (st.success if checks.get("passed") else st.error)(
        ("Checks passed: " if checks.get("passed") else "Checks failed: ") + "; ".join(checks.get("reasons", [])))
    if gate["kind"] in EVIDENCE:
        EVIDENCE[gate["kind"]](gate, checks)
    else:  # a gate kind this page does not know yet: its checks, one row each
        checks_table(checks)
    with st.expander("All checks as recorded (JSON)"):  # for an auditor comparing with the store
        st.json(checks, expanded=False)

    if who:
        with st.form(f"decide_{gid}"):
            st.text_area("Comment", key=f"comment_{gid}", placeholder="what you checked")
            b1, b2 = st.columns(2)
            if not needs_override:
                b1.form_submit_button("Approve", type="primary", on_click=decide, args=(gid, True),
                                      key=f"approve_{gid}")
            b2.form_submit_button("Reject", on_click=decide, args=(gid, False), key=f"reject_{gid}")
        if needs_override:
            if st.checkbox(f"The checks of gate {gid} failed: I want to approve it anyway (an override, audited as "
                           "one)", key=f"override_ack_{gid}"):
                with st.form(f"override_form_{gid}"):
                    st.text_area("Reason for the override (required)", key=f"override_reason_{gid}",
                                 placeholder="why the failed checks do not matter here")
                    st.form_submit_button("Override and approve", type="secondary", icon=":material/warning:",
                                          on_click=decide, args=(gid, True, True), key=f"override_{gid}")
    st.divider()

st.subheader("Decided")
history = queries.decided_gates(ws)
if history.empty:
    st.caption("No gate has been decided yet.")
else:
    history = history.assign(kind=history["kind"].map(tables.gate_name))
    tables.show(history, {"id": "Gate", "cycle_id": "Cycle", "kind": "Kind", "status": "Decision",
                          "policy": "Policy", "decided_by": "Decided by", "decided_at": "Decided at",
                          "automatic": "Automatic", "comment": "Comment"},
                {"id": "text", "cycle_id": "text", "decided_at": "time", "automatic": "text"},
                column_config={"Comment": st.column_config.TextColumn(width="large")})
