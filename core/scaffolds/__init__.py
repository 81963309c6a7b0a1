"""Scaffolds: inference programs made of steps, stored as data, mutated, A/B-tested and adopted through a gate.

The server and the CLI need two calls:

    scaffold_id, spec = load_production(ws)
    rows = run.run(spec, loaded_model, texts, run.bank_for(ws, loaded_model))   # [{label, confidence, abstained}]

(`core.scaffolds.run` loads the model code, so this package does not import it: reading which scaffold is in
production, as `status` does, needs no torch.)
"""
from __future__ import annotations

from core.scaffolds.archive import production
from core.scaffolds.spec import ScaffoldError

__all__ = ["ScaffoldError", "load_production"]


def load_production(ws) -> tuple[str, dict]:
    """(scaffold id, spec) of the workspace's production scaffold."""
    return production(ws.store)
