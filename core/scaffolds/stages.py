"""A scaffold cycle: search -> A/B test -> scaffold_adoption gate -> adopt, on the cycle machinery.

It is a cycle of kind "scaffold" in the same persisted state machine as model cycles, so `approve`,
`reject`, `resume`, the Approvals page and the audit log work on it unchanged. A trial of a given candidate
(`scaffolds trial`) starts at the A/B test and skips the search. `core.cycle.run_scaffold_cycle` starts one
and runs it.
"""
from __future__ import annotations

import sys

from core.flow import gate_stage
from core.scaffolds import abtest, archive, spec as S
from core.scaffolds.evaluate import trial_rows
from core.scaffolds.run import llm_asker
from core.scaffolds.search import evaluator, search

KIND = "scaffold"
ACTOR = "engine"


def start(ws, flow: dict, budget: int | None = None, candidate: str | None = None) -> int:
    """Open a scaffold cycle on the production model: a search of `budget`, or an A/B trial of `candidate`
    (`flow`: this kind's stages, from the engine's table)."""
    store = ws.store
    version = store.alias("production")
    if not version:
        from core.errors import NoModelError

        raise NoModelError("no production model yet: scaffolds run on one (run `python -m core evolve`)")
    archive.ensure_builtins(store)
    production_id, _ = archive.production(store)
    if candidate is not None:
        spec = archive.get(store, candidate)
        if candidate == production_id:
            raise ValueError(f"scaffold {candidate} is already the production scaffold")
        if S.needs_llm(spec) and llm_asker(ws.config().scaffolds.llm) is None:
            raise S.ScaffoldError(f"scaffold {candidate} has an llm step but scaffolds.llm is not enabled")
    budget = budget if budget is not None else ws.config().scaffolds.budget
    if budget < 1:
        raise ValueError("--budget must be at least 1")
    first = next(iter(flow))  # a trial of a named candidate skips the search
    return store.create_scaffold_cycle(flow[first].next if candidate else first, version, budget,
                                       production_id, candidate, ACTOR)


def stage_search(ws, cycle: dict, ctx: dict, step) -> None:
    trial = ws.store.scaffold_trial(cycle["id"])
    winner = search(ws, cycle["id"], cycle["parent_version"], trial["budget"], trial["production_id"],
                    ctx["progress"])
    ws.store.set_trial_candidate(cycle["id"], winner, step.next)
    ctx["stage_detail"] = {"winner": winner}
    if ctx["progress"]:
        print(f"  search: winner {winner}", file=sys.stderr, flush=True)


def ab_result(ws, cycle_id: int, version: str, production_id: str, candidate_id: str) -> dict:
    """Both scaffolds on the trial's A/B part of the selection rows and on the guardrails, with the adoption
    checks."""
    store, cfg = ws.store, ws.config()
    sc = cfg.scaffolds
    _, ab_part = trial_rows(store, sc, cycle_id)
    ev = evaluator(ws, version, ab_part)
    prod_metrics, prod_correct = ev(archive.get(store, production_id))
    cand_metrics, cand_correct = ev(archive.get(store, candidate_id))
    for metrics, correct in ((prod_metrics, prod_correct), (cand_metrics, cand_correct)):
        metrics["ci_low"], metrics["ci_high"] = abtest.wilson(correct, sc.alpha)
    checks = abtest.adoption_checks(prod_correct, cand_correct, prod_metrics["guardrail_pass"],
                                    cand_metrics["guardrail_pass"], sc.test, sc.alpha, sc.bootstrap_iterations,
                                    cfg.gates.scaffold_adoption.auto_min_gain, sc.seed)
    checks.update(candidate=candidate_id, production=production_id, model_version=version, rows="selection")
    return {"production": prod_metrics, "candidate": cand_metrics, "checks": checks}


def stage_ab(ws, cycle: dict, ctx: dict, step) -> None:
    trial = ws.store.scaffold_trial(cycle["id"])
    result = ab_result(ws, cycle["id"], cycle["parent_version"], trial["production_id"], trial["candidate_id"])
    ws.store.save_trial_result(cycle["id"], result, step.next)
    if ctx["progress"]:
        print(f"  ab_test: {'; '.join(result['checks']['reasons'])}", file=sys.stderr, flush=True)


def stage_gate(ws, cycle: dict, ctx: dict, step):
    checks = ws.store.scaffold_trial(cycle["id"])["result"]["checks"]
    return gate_stage(ws, cycle, ctx, "scaffold_adoption", checks, step)


def stage_retest(ws, cycle: dict, ctx: dict, step) -> None:
    """After a model promotion (a stage of the evolve flow): the production scaffold against the plain model on
    the version just promoted, on this cycle's own split of the selection rows. A scaffold adopted for an
    earlier model may stop helping the new one; `plain_better` says the plain model now wins by the adoption
    checks, and the daemon then tries the plain model through the scaffold_adoption gate (core/daemon.py).
    Nothing is adopted here."""
    store = ws.store
    version = cycle["candidate_version"]
    production_id, _ = archive.production(store)
    if production_id == S.DEFAULT:
        result = {"plain_better": False, "model_version": version, "scaffold": production_id,
                  "skipped": "the production scaffold is the plain model"}
    else:
        result = ab_result(ws, cycle["id"], version, production_id, S.DEFAULT)
        result["plain_better"] = bool(result["checks"]["passed"])
    store.save_scaffold_retest(cycle["id"], version, production_id, result, step.next)
    ctx["stage_detail"] = {"plain_better": result["plain_better"], "production": production_id}
    if ctx["progress"]:
        said = result.get("skipped") or "; ".join(result["checks"]["reasons"])
        print(f"  scaffold_retest: {production_id} against the plain model on {version}: {said}",
              file=sys.stderr, flush=True)


def stage_adopt(ws, cycle: dict, ctx: dict, step) -> None:
    gate = ws.store.gate_for(cycle["id"], "scaffold_adoption")
    if gate is None or gate["status"] != "approved":  # never adopt past a gate that did not allow it
        raise RuntimeError(f"cycle {cycle['id']} reached adoption without an approved gate")
    trial = ws.store.scaffold_trial(cycle["id"])
    ws.store.adopt_scaffold(trial["candidate_id"], gate["decided_by"],
                            f"gate {gate['id']}: {gate['comment'] or 'approved'}", cycle["id"])

