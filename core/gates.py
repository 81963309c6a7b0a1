"""Oversight gates: the checks a candidate must pass, and who may decide what under each policy."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from core.config import GateConfig, GatesConfig
from core.store import Store, StoreConflict, utcnow

AUTO_ACTOR = "auto"
AUTO_APPROVE_ACTOR = "auto-approve"


def promotion_checks(cfg: GatesConfig, candidate: dict, production: dict | None) -> dict:
    """candidate/production: evaluations with accuracy and per_class. Passing is necessary, never sufficient."""
    checks = {"candidate_accuracy": candidate["accuracy"], "min_gain": cfg.min_gain,
              "max_recall_drop": cfg.max_recall_drop, "forgetting_min_examples": cfg.forgetting_min_examples,
              "reasons": []}
    if production is None:
        checks.update(production_accuracy=None, gain=None, worst_recall_drop=None, passed=True,
                      within_thresholds=True)
        checks["reasons"].append("no production model yet: this is the baseline")
        return checks
    gain = candidate["accuracy"] - production["accuracy"]
    worst_label, worst_drop, forgotten = None, 0.0, []
    for label, prod in production["per_class"].items():
        cand = candidate["per_class"].get(label, {})
        if prod.get("recall") is None or cand.get("recall") is None:
            continue
        drop = prod["recall"] - cand["recall"]
        if drop > worst_drop:
            worst_label, worst_drop = label, drop
        lost = round(drop * (prod.get("support") or 0))
        if drop > cfg.max_recall_drop and lost >= cfg.forgetting_min_examples:
            forgotten.append(f"'{label}' -{drop:.3f} ({lost} examples)")
    checks.update(production_accuracy=production["accuracy"], gain=gain,
                  worst_recall_drop={"label": worst_label, "drop": worst_drop}, forgotten=forgotten,
                  within_thresholds=gain >= cfg.promotion.auto_min_gain)
    if not gain > cfg.min_gain:
        checks["reasons"].append(f"accuracy gain {gain:+.4f} does not beat the margin {cfg.min_gain:+.4f}")
    if forgotten:
        checks["reasons"].append(f"forgetting guard: recall drops by more than {cfg.max_recall_drop:.3f} in "
                                 + ", ".join(forgotten))
    checks["passed"] = not checks["reasons"]
    if checks["passed"]:
        checks["reasons"].append(f"accuracy {gain:+.4f}; worst class recall drop {worst_drop:.3f}")
    return checks


def data_review_checks(gate: GateConfig, kept: int, generated: int, mean_confidence: float | None) -> dict:
    within = kept <= gate.auto_max_samples and (mean_confidence or 0.0) >= gate.auto_min_confidence
    return {"passed": True, "kept": kept, "generated": generated, "mean_confidence": mean_confidence,
            "within_thresholds": within,
            "reasons": [f"generated {generated:,}, kept {kept:,}"
                        + (f" (mean confidence {mean_confidence:.3f})" if mean_confidence is not None else "")]}


@dataclass(frozen=True)
class Verdict:
    action: str  # approve, reject or wait
    actor: str
    comment: str


def automatic_verdict(gate: GateConfig, checks: dict, auto_approve: bool, hard: bool = True) -> Verdict:
    """hard: failed checks reject at once (promotion). Not hard (drift_review): a failed check is what the
    gate is for, so a `human` policy asks a person while automatic decisions reject."""
    if not checks["passed"]:
        if hard or auto_approve or gate.policy != "human":
            return Verdict("reject", AUTO_ACTOR, "checks failed: " + "; ".join(checks["reasons"]))
        return Verdict("wait", "", "waiting for a human decision")
    if auto_approve:
        return Verdict("approve", AUTO_APPROVE_ACTOR, "--auto-approve: checks passed")
    if gate.policy == "auto":
        return Verdict("approve", AUTO_ACTOR, "policy auto: checks passed")
    if gate.policy == "auto_under_thresholds" and checks.get("within_thresholds"):
        return Verdict("approve", AUTO_ACTOR, "policy auto_under_thresholds: within thresholds")
    return Verdict("wait", "", "waiting for a human decision")


def open_gate(store: Store, cycle_id: int, kind: str, gate: GateConfig, checks: dict) -> dict:
    gid = store.open_gate(cycle_id, kind, gate.policy, checks, utcnow() + timedelta(hours=gate.timeout_hours))
    return store.gate(gid)


def decide(store: Store, gate_id: int, approved: bool, by: str, comment: str = "", automatic: bool = False) -> dict:
    if not by or not by.strip():
        raise ValueError("a decision needs the name of who made it (--by)")
    return store.decide_gate(gate_id, approved, by.strip(), comment, automatic)


def decide_as(store: Store, gate_id: int, approved: bool, name: str, password: str, comment: str = "") -> dict:
    """A person's decision: only an approver with the right password may make it (CLI and dashboard)."""
    from core.auth import require_approver

    require_approver(store, name, password, f"gate:{gate_id}")
    return decide(store, gate_id, approved, name, comment)


def expire_if_due(store: Store, gate: dict) -> dict:
    """A pending gate past its deadline is rejected: silence never ships weights."""
    if gate["status"] == "pending" and gate["deadline"] is not None and utcnow() > gate["deadline"]:
        try:
            decide(store, gate["id"], False, AUTO_ACTOR, "timed out without a decision", automatic=True)
        except StoreConflict:
            pass
        return store.gate(gate["id"])
    return gate
