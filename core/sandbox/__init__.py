"""Execution verification: run a candidate where it can do no harm and report what it did.

    from core.sandbox import open_sandbox
    with open_sandbox("local") as sandbox:          # a throwaway PostgreSQL cluster in a temp folder
        outcome = sandbox.check("ALTER TABLE orders ADD COLUMN note text")   # -> Outcome (outcome.py)
        outcomes = sandbox.check_many(migrations)                          # parallel, input order

`open_sandbox(postgres)`: None -> the embedded DuckDB fallback (no locks or rewrites: those labels are
unverifiable); "local" -> a throwaway cluster (needs the PostgreSQL server binaries); anything else -> a DSN of
a server the sandbox may create databases and roles on. `Outcome.verdict(claimed)` answers in the same shape as
a user's own check (core/sandbox/external.py), so a verifier treats both alike.
"""
from __future__ import annotations

import os

from core.sandbox.outcome import LABELS, Outcome

__all__ = ["LABELS", "Outcome", "open_sandbox"]


def open_sandbox(postgres: str | None = None, *, workers: int | None = None, timeout_ms: int = 2000):
    workers = workers or min(4, os.cpu_count() or 1)
    if not postgres:
        from core.sandbox.duckdb_fallback import DuckDBSandbox

        return DuckDBSandbox(workers=workers, timeout_s=timeout_ms / 1000)
    from core.sandbox.postgres import PostgresSandbox

    if postgres == "local":
        return PostgresSandbox.local(workers=workers, statement_timeout_ms=timeout_ms)
    return PostgresSandbox(postgres, workers=workers, statement_timeout_ms=timeout_ms)
