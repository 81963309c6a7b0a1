"""What a migration did when it ran, and the label that evidence decides.

The label is a pure function of measured evidence, never of the SQL text, so the same rule serves the
PostgreSQL sandbox, the DuckDB fallback (which cannot see locks or rewrites) and the tests.

Precedence, most serious first (a migration that fails did nothing else; one that loses data is worse than
one that breaks a query, which is worse than one that only blocks writers for a while):

    contained (label None, escape)  >  fails  >  loses_data  >  breaks_queries  >  rewrites_table  >  safe

- contained: refused before execution (never-run statements), or stopped by a limit (statement timeout,
  resource limit, a privilege outside the clone). `escape` is True; the sample is never kept.
- fails: the migration raised an error; `sqlstate` and `error` say which.
- loses_data: a pre-existing table lost rows, or a pre-existing column lost non-null values or distinct
  values (a lossless type change keeps distinct values; a narrowing one merges them), or a table or column
  that held data is gone.
- breaks_queries: the data is intact but an application query that ran on the base schema now errors.
- rewrites_table: a large table (>= LARGE_TABLE_ROWS rows) had its storage rewritten (pg_class.relfilenode
  changed), or was read in full while this migration held a lock on it that blocks writers (ShareLock or
  stronger: a non-concurrent index build, a validating CHECK/NOT NULL/foreign key, a backfill under an
  earlier ALTER in the same transaction).
- safe: none of the above was observed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

LABELS = ["safe", "fails", "loses_data", "breaks_queries", "rewrites_table"]
PRECEDENCE = ["fails", "loses_data", "breaks_queries", "rewrites_table", "safe"]

# Lock modes that conflict with RowExclusiveLock (INSERT/UPDATE/DELETE): holding one blocks the application's
# writes for as long as the transaction runs.
WRITE_BLOCKING = {"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"}


@dataclass
class Outcome:
    label: str | None  # one of LABELS; None when contained or when the backend cannot decide
    reason: str  # why this label, in words, from the evidence
    sqlstate: str | None = None
    error: str | None = None
    # table -> {"rows": [before, after], "columns": {column: {"non_null": [b, a], "distinct": [b, a]}}};
    # only tables the migration touched (took a lock on) are counted again, the rest cannot have changed.
    counts: dict = field(default_factory=dict)
    broken_queries: list[str] = field(default_factory=list)  # "name: error" of app queries that now fail
    rewritten: list[str] | None = field(default_factory=list)  # large tables with new storage; None: unverifiable
    locks: list[str] | None = field(default_factory=list)  # "table: Mode" on pre-existing relations; None: unverifiable
    blocking_scans: list[str] | None = field(default_factory=list)  # large tables read in full under a write-blocking lock
    escape: bool = False  # refused or stopped by a sandbox limit; never a training label
    backend: str = "postgres"
    seconds: float = 0.0
    statements: int = 0

    def evidence(self) -> dict:
        """The compact record stored with a sample: what changed, not every count."""
        out = {k: v for k, v in asdict(self).items() if k not in ("counts",)}
        changed = {}
        for table, c in self.counts.items():
            cols = {col: v for col, v in c.get("columns", {}).items()
                    if v["non_null"][0] != v["non_null"][1] or v["distinct"][0] != v["distinct"][1]}
            if c["rows"][0] != c["rows"][1] or cols:
                changed[table] = {"rows": c["rows"], "columns": cols}
        out["changed"] = changed
        return out

    def verdict(self, claimed: str) -> dict:
        """The same answer a user's own check gives (core.sandbox.external): keep a sample only when its
        execution confirms the label it claims."""
        if self.escape:
            return {"keep": False, "evidence": self.evidence(), "reason": f"contained: {self.reason}"}
        if self.label is None:
            return {"keep": False, "evidence": self.evidence(), "reason": f"unverifiable: {self.reason}"}
        keep = self.label == claimed
        why = f"execution confirms {claimed}" if keep else f"claimed {claimed}, execution says {self.label}"
        return {"keep": keep, "evidence": self.evidence(), "reason": f"{why}: {self.reason}"}


def contained(reason: str, *, backend: str, sqlstate: str | None = None, error: str | None = None,
              statements: int = 0) -> Outcome:
    return Outcome(label=None, reason=reason, sqlstate=sqlstate, error=error, escape=True, backend=backend,
                   statements=statements)


def lost_data(counts: dict, dropped: list[str]) -> list[str]:
    """Each way the counts show data gone: dropped tables/columns that held data, fewer rows, fewer values."""
    lost = list(dropped)
    for table, c in counts.items():
        b, a = c["rows"]
        gone = max(0, b - a) if a is not None else 0
        if gone:
            lost.append(f"{table}: {gone} of {b} rows gone")
        for col, v in c.get("columns", {}).items():
            if v["non_null"][1] is None:
                if v["non_null"][0]:
                    lost.append(f"{table}.{col}: column with {v['non_null'][0]} values gone")
                continue
            if v["non_null"][0] - v["non_null"][1] > gone:  # more than the deleted rows took with them
                lost.append(f"{table}.{col}: {v['non_null'][0] - v['non_null'][1] - gone} values became NULL")
            elif not gone and v["distinct"][1] < v["distinct"][0]:
                lost.append(f"{table}.{col}: {v['distinct'][0]} distinct values became {v['distinct'][1]}")
    return lost


def decide(*, error: str | None, sqlstate: str | None, counts: dict, dropped: list[str],
           broken_queries: list[str], rewritten: list[str] | None, blocking_scans: list[str] | None
           ) -> tuple[str | None, str]:
    """(label, reason) from measured evidence, by PRECEDENCE. rewritten/blocking_scans None: the backend
    cannot observe them, so safe and rewrites_table cannot be told apart and the label is None."""
    if error is not None:
        return "fails", f"error {sqlstate or '?'}: {error.splitlines()[0][:200]}"
    lost = lost_data(counts, dropped)
    if lost:
        return "loses_data", "; ".join(lost[:5])
    if broken_queries:
        return "breaks_queries", "application queries fail: " + "; ".join(broken_queries[:5])
    if rewritten is None or blocking_scans is None:
        return None, "applied, kept the data and the queries; locks and rewrites are unverifiable here"
    if rewritten or blocking_scans:
        parts = [f"{t} rewritten (new relfilenode)" for t in rewritten] + list(blocking_scans)
        return "rewrites_table", "; ".join(parts[:5])
    return "safe", "applied; data, queries and large tables untouched"
