"""What every cycle's flow is built from: a `Stage` (what runs, where the cycle goes next), the `Outcome` a run
of the engine ends with, and `gate_stage`, the step through which each flow's gates decide or wait.

`core/cycle.py` declares every flow in `FLOWS`, holds the model stages and walks the table; the scaffold stages
(`core/scaffolds/stages.py`) are built from these pieces too, so they need nothing from the engine that runs them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from core import gates
from core.store import StoreConflict
from core.workspace import Workspace


@dataclass
class Outcome:
    cycle_id: int
    status: str  # one of END_STATUSES, waiting or stopped
    stage: str
    gate_id: int | None = None
    message: str = ""


@dataclass(frozen=True)
class Stage:
    """One step of a cycle: what runs, where the cycle goes when it completes, and where it goes on its other
    exit (a gate's "no" ends the cycle as rejected; a drift verdict other than pass goes to its review)."""
    run: Callable  # (ws, cycle, ctx, stage) -> Outcome | None
    next: str
    otherwise: str | None = None


def gate_stage(ws: Workspace, cycle: dict, ctx: dict, kind: str, checks: dict, step: Stage,
               hard: bool = True) -> Outcome | None:
    """Open (or find) the cycle's gate of this kind, let its policy decide if it may, else wait for a person."""
    store = ws.store
    gate_cfg = getattr(ws.config().gates, kind)
    with store.kept_open():  # bookkeeping only: the checks were computed before
        gate = gates.open_gate(store, cycle["id"], kind, gate_cfg, checks)
        verdict = None
        if gate["status"] == "pending":
            # the policy the gate was opened under governs it, even if config.toml changed since
            gate_cfg = gate_cfg.model_copy(update={"policy": gate["policy"]})
            verdict = gates.automatic_verdict(gate_cfg, checks, ctx["auto_approve"], hard=hard)
            if verdict.action != "wait":
                try:
                    gates.decide(store, gate["id"], verdict.action == "approve", verdict.actor, verdict.comment,
                                 automatic=True)
                except StoreConflict:
                    pass  # a person decided in the meantime; their decision stands
            gate = gates.expire_if_due(store, store.gate(gate["id"]))
        if gate["status"] == "pending":
            store.set_cycle_waiting(cycle["id"], True)
            why = f" ({verdict.comment})" if verdict and verdict.comment else ""
            return Outcome(cycle["id"], "waiting", cycle["stage"], gate["id"],
                           f"cycle {cycle['id']} waits at {kind} gate {gate['id']}{why}: decide with "
                           f"`python -m core approve|reject --workspace {ws.root} {gate['id']} --by NAME`, "
                           f"then `python -m core resume --workspace {ws.root}`")
        if gate["status"] == "approved":
            store.set_stage(cycle["id"], step.next)
            return None
        store.reject_cycle(cycle["id"], gate["decided_by"], gate["comment"] or f"{kind} gate rejected")
        return None
