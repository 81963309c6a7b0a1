"""Scaffolds: inference programs made of steps, stored as data, mutated, A/B-tested and adopted through a gate.

The server and the CLI need two calls:

    scaffold_id, spec = load_production(ws)
    rows = run(spec, loaded_model, texts, bank_for(ws, loaded_model))   # [{label, confidence, abstained}]
"""
from __future__ import annotations

from core.scaffolds.archive import production
from core.scaffolds.run import Bank, bank_for, llm_asker, run
from core.scaffolds.spec import ScaffoldError

__all__ = ["Bank", "ScaffoldError", "bank_for", "llm_asker", "load_production", "run"]


def load_production(ws) -> tuple[str, dict]:
    """(scaffold id, spec) of the workspace's production scaffold."""
    return production(ws.store)
