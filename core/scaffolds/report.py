"""What there is to know about a workspace's scaffolds, as plain data for the CLI, the dashboard and a server."""
from __future__ import annotations

import json

from core.scaffolds import archive, spec as S


def _clean(value):
    return None if value is None or value != value else value  # NaN (missing) -> None


def overview(store) -> dict:
    """Production scaffold, the archive with lineage and search scores (on the production model), and trials."""
    version = store.alias("production")
    production_id, production_spec = archive.production(store)
    evals = store.scaffold_evals(version, "search") if version else None
    scores = {r["scaffold_id"]: r for r in evals.to_dict("records")} if evals is not None else {}
    rows = []
    for r in store.scaffolds().to_dict("records"):
        spec = json.loads(r["spec"])
        e = scores.get(r["id"], {})
        rows.append({"id": r["id"], "num": r["num"], "name": r["name"], "parent": _clean(r["parent_id"]),
                     "operator": _clean(r["operator"]), "cycle": _clean(r["cycle_id"]), "steps": S.describe(spec),
                     "accuracy": _clean(e.get("accuracy")), "coverage": _clean(e.get("coverage")),
                     "guardrail_pass": _clean(e.get("guardrail_pass")), "novelty": _clean(e.get("novelty")),
                     "production": r["id"] == production_id, "created_at": r["created_at"]})
    gates = store.gates()
    trials = []
    for t in store.scaffold_trials().to_dict("records"):
        result = json.loads(t["result"]) if t["result"] else None
        gate = gates[(gates["cycle_id"] == t["cycle_id"]) & (gates["kind"] == "scaffold_adoption")]
        checks = (result or {}).get("checks", {})
        trials.append({"cycle": t["cycle_id"], "model_version": t["model_version"], "budget": t["budget"],
                       "production": t["production_id"], "candidate": _clean(t["candidate_id"]),
                       "status": t["status"], "stage": t["stage"],
                       "production_accuracy": (result or {}).get("production", {}).get("accuracy"),
                       "candidate_accuracy": (result or {}).get("candidate", {}).get("accuracy"),
                       "gain": checks.get("gain"), "ci_low": checks.get("ci_low"), "ci_high": checks.get("ci_high"),
                       "p_value": checks.get("p_value"), "passed": checks.get("passed"),
                       "reasons": checks.get("reasons", []), "result": result,
                       "gate": int(gate["id"].iloc[0]) if len(gate) else None,
                       "gate_status": gate["status"].iloc[0] if len(gate) else None})
    retests = []
    for r in store.scaffold_retests().to_dict("records"):
        result = json.loads(r["result"])
        checks = result.get("checks", {})
        retests.append({"cycle": r["cycle_id"], "model_version": r["model_version"], "production": r["production_id"],
                        "plain_better": result["plain_better"], "skipped": result.get("skipped"),
                        "production_accuracy": result.get("production", {}).get("accuracy"),
                        "plain_accuracy": result.get("candidate", {}).get("accuracy"),
                        "gain": checks.get("gain"), "p_value": checks.get("p_value"),
                        "reasons": checks.get("reasons", []), "at": r["at"]})
    return {"model_version": version,
            "production": {"id": production_id, "name": production_spec["name"],
                           "steps": S.describe(production_spec), "spec": production_spec},
            "adoptions": store.scaffold_adoptions().to_dict("records"), "archive": rows, "trials": trials,
            "retests": retests}
