"""The same check on an embedded DuckDB, for when no PostgreSQL is configured.

It observes what DuckDB can show honestly: errors, row/non-null/distinct counts and the application queries.
It cannot see locks or table rewrites, so those are None and a migration that applies cleanly gets label None
("safe or rewrites_table: unverifiable here"), never a guess. DuckDB also refuses some PostgreSQL statements
(CONCURRENTLY, VACUUM FULL, NOT VALID, ALTER of a table an index depends on ...): those are unverifiable too,
not `fails`, because PostgreSQL would run them. Its copy of the base schema has no foreign keys or secondary
indexes, since DuckDB cannot alter a table that one depends on; a foreign-key failure is not observable here.

Each check copies a prepared database file and opens it with file access, extensions and configuration
changes switched off, under a time limit (DuckDB has no statement_timeout: a timer interrupts it). The migration
commits in one session; the measuring happens in a new one, so nothing of the migration's session (temp tables in
front of the real ones, its search_path) is seen, and every table and function it reads is named with its
catalog and schema (a macro in main can stand in for count() or duckdb_tables()).
"""
from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb

from core.sandbox import schema
from core.sandbox.outcome import Outcome, contained, decide
from core.sandbox.safety import screen

BACKEND = "duckdb"
UNOBSERVABLE = "DuckDB shows no locks or table rewrites"
# Errors that mean "this migration fails on this data/schema", with the PostgreSQL class they correspond to.
FAILS = {duckdb.ConstraintException: "23000", duckdb.ConversionException: "22000",
         duckdb.OutOfRangeException: "22003", duckdb.CatalogException: "42P01", duckdb.BinderException: "42703",
         duckdb.InvalidInputException: "22023"}
# Errors that are DuckDB's limits, not the migration's: PostgreSQL would run the statement.
UNVERIFIABLE = (duckdb.ParserException, duckdb.NotImplementedException, duckdb.DependencyException)
LOCKDOWN = ["SET enable_external_access = false", "SET autoinstall_known_extensions = false",
            "SET autoload_known_extensions = false", "SET threads = 1", "SET memory_limit = '256MB'",
            "SET lock_configuration = true"]


def duckdb_ddl() -> str:
    ddl = re.sub(r"\s+REFERENCES \w+\(\w+\)( ON DELETE CASCADE)?", "", schema.DUCKDB_DDL)
    return re.sub(r"CREATE INDEX [^;]+;", "", ddl)


class DuckDBSandbox:
    def __init__(self, *, workers: int = 2, timeout_s: float = 2.0):
        self.workers = max(1, workers)
        self.timeout_s = timeout_s
        self.root = Path(tempfile.mkdtemp(prefix="evolab-duck-"))
        self.base_file = self.root / "base.duckdb"
        self._n = 0
        self._lock = threading.Lock()
        self.base = self._build()

    def _build(self) -> dict:
        import pyarrow as pa

        conn = duckdb.connect(str(self.base_file))
        conn.execute(duckdb_ddl())
        data = schema.rows()
        for table, cols in schema.TABLES.items():
            rows = [tuple(v.replace("+00", "") if isinstance(v, str) and v.endswith("+00") else v for v in r)
                    for r in data[table]]
            if rows:
                conn.register("src", pa.table({c: [r[i] for r in rows] for i, c in enumerate(cols)}))
                conn.execute(f"INSERT INTO {table} SELECT * FROM src")
                conn.unregister("src")
        broken = _app_queries(conn)
        if broken:
            raise RuntimeError(f"the DuckDB base schema breaks its own application queries: {broken}")
        base = {}
        for name, oid in _tables(conn, "base").items():
            cols = _columns(conn, oid)
            rows, values = _count(conn, "base", name, list(cols.values()))
            base[name] = {"oid": oid, "rows": rows,
                          "columns": {i: (c, *v) for (i, c), v in zip(cols.items(), values)}}
        conn.close()
        return base

    def check(self, migration: str) -> Outcome:
        start = time.perf_counter()
        out = self._check(migration)
        out.rewritten = out.locks = out.blocking_scans = None  # never observable here, whatever the outcome
        out.seconds = round(time.perf_counter() - start, 4)
        return out

    def check_many(self, migrations: list[str]) -> list[Outcome]:
        if self.workers == 1 or len(migrations) < 2:
            return [self.check(m) for m in migrations]
        with ThreadPoolExecutor(self.workers, thread_name_prefix="duck-sandbox") as pool:
            return list(pool.map(self.check, migrations))

    def _check(self, migration: str) -> Outcome:
        scr = screen(migration)  # the same walls as PostgreSQL: PostgreSQL's parser decides what may run
        if scr.parse_error:
            return Outcome("fails", f"does not parse: {scr.parse_error}", sqlstate="42601",
                           error=scr.parse_error, backend=BACKEND, rewritten=None, locks=None, blocking_scans=None)
        if scr.refused:
            return contained(f"refused before execution: {scr.refused}", backend=BACKEND)
        if scr.unsupported:
            return Outcome(None, f"unsupported: {scr.unsupported}", backend=BACKEND)
        with self._lock:
            self._n += 1
            path = self.root / f"clone{self._n}.duckdb"
        shutil.copyfile(self.base_file, path)
        try:
            return self._run(path, scr)
        finally:
            path.unlink(missing_ok=True)
            Path(str(path) + ".wal").unlink(missing_ok=True)

    def _session(self, path: Path, work):
        """work(conn, catalog) in a new locked-down session on the clone, interrupted past the time limit."""
        conn = duckdb.connect(str(path))
        timer = threading.Timer(self.timeout_s, conn.interrupt)
        try:
            for setting in LOCKDOWN:
                conn.execute(setting)
            timer.start()
            return work(conn, path.stem)  # DuckDB names a file's catalog after the file
        finally:
            timer.cancel()
            conn.close()

    def _run(self, path: Path, scr) -> Outcome:
        n = len(scr.statements)
        unknown = dict(rewritten=None, locks=None, blocking_scans=None, backend=BACKEND, statements=n)

        def migrate(conn, catalog) -> dict[str, str | None]:
            """Each base table's name after the migration (None: gone), followed by name, else by oid (a rename
            keeps it). DuckDB assigns oids anew whenever a file is opened: only this session can compare them."""
            before = _tables(conn, catalog)
            conn.execute("BEGIN")
            for stmt in scr.statements:
                conn.execute(stmt)
            conn.execute("COMMIT")
            after = _tables(conn, catalog)
            by_oid = {oid: name for name, oid in after.items()}
            return {name: name if name in after else by_oid.get(oid) for name, oid in before.items()}

        def measure(conn, catalog):
            return (*self._after(conn, catalog, renamed, scr.relations), _app_queries(conn))

        try:
            renamed = self._session(path, migrate)
            counts, dropped, broken = self._session(path, measure)
        except duckdb.InterruptException as e:
            return contained("stopped: ran past the time limit", backend=BACKEND, error=str(e)[:300], statements=n)
        except duckdb.PermissionException as e:
            return contained(f"stopped: reached outside the sandbox ({str(e)[:120]})", backend=BACKEND,
                             error=str(e)[:300], statements=n)
        except UNVERIFIABLE as e:
            return Outcome(None, f"unverifiable: DuckDB cannot run this PostgreSQL migration "
                                 f"({type(e).__name__}: {str(e).splitlines()[0][:150]})", error=str(e)[:300], **unknown)
        except duckdb.Error as e:
            state = next((s for cls, s in FAILS.items() if isinstance(e, cls)), None)
            if state is None:
                return Outcome(None, f"unverifiable: DuckDB error {type(e).__name__}: {str(e)[:150]}",
                               error=str(e)[:300], **unknown)
            label, reason = decide(error=str(e), sqlstate=state, counts={}, dropped=[], broken_queries=[],
                                   rewritten=None, blocking_scans=None)
            return Outcome(label, reason, sqlstate=state, error=str(e)[:300], **unknown)
        label, reason = decide(error=None, sqlstate=None, counts=counts, dropped=dropped, broken_queries=broken,
                               rewritten=None, blocking_scans=None)
        if label is None:
            reason = f"safe or rewrites_table, unverifiable: {UNOBSERVABLE}"
        return Outcome(label, reason, counts=counts, broken_queries=broken, **unknown)

    def _after(self, conn, catalog: str, renamed: dict[str, str | None], mentioned: set[str]):
        """Like the PostgreSQL sandbox: each table by its name after the migration (renamed: see _run); columns
        by name, else by position when that position holds a new name. DuckDB has no foreign keys, triggers or
        procedural code here, so only the tables the migration names can have changed: only those are counted."""
        tables = _tables(conn, catalog)
        counts, dropped = {}, []
        for name, t in self.base.items():
            now = renamed.get(name)
            if now is None:
                if t["rows"]:
                    dropped.append(f"{name}: table with {t['rows']} rows dropped")
                continue
            if name not in mentioned:
                continue
            cols = _columns(conn, tables[now])
            names = set(cols.values())
            follow = {i: c for i, (c, _, _) in t["columns"].items() if c in names}
            old = {c for c, _, _ in t["columns"].values()}
            follow |= {i: cols[i] for i in t["columns"] if i not in follow and i in cols and cols[i] not in old}
            present = list(dict.fromkeys(follow.values()))
            rows, values = _count(conn, catalog, now, present)
            got = dict(zip(present, values))
            columns = {}
            for i, (col, non_null, distinct) in t["columns"].items():
                after = got.get(follow[i]) if i in follow else None
                columns[col] = {"non_null": [non_null, after[0] if after else None],
                                "distinct": [distinct, after[1] if after else None]}
            counts[name] = {"rows": [t["rows"], rows], "columns": columns}
        return counts, dropped

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _tables(conn, catalog: str) -> dict[str, int]:
    """name -> oid of the tables in the clone's own main schema (not another schema's or a temp copy)."""
    return dict(conn.execute("SELECT table_name, table_oid FROM system.main.duckdb_tables() "
                             "WHERE database_name = ? AND schema_name = 'main'", [catalog]).fetchall())


def _columns(conn, oid: int) -> dict[int, str]:
    rows = conn.execute("SELECT column_index, column_name FROM system.main.duckdb_columns() WHERE table_oid = ? "
                        "ORDER BY column_index", [oid]).fetchall()
    return dict(rows)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _count(conn, catalog: str, table: str, columns: list[str]):
    count = "system.main.count"
    parts = [f"{count}(*)"] + [p for c in columns
                               for p in (f"{count}({_quote(c)})", f"{count}(DISTINCT {_quote(c)}::text)")]
    row = conn.execute(f"SELECT {', '.join(parts)} FROM {_quote(catalog)}.main.{_quote(table)}").fetchone()
    return row[0], [(row[1 + 2 * i], row[2 + 2 * i]) for i in range(len(columns))]


def _app_queries(conn) -> list[str]:
    broken = []
    for name, query in schema.APP_QUERIES.items():
        conn.execute("BEGIN")
        try:
            conn.execute(query).fetchall()
        except duckdb.InterruptException:
            conn.execute("ROLLBACK")
            raise
        except duckdb.Error as e:
            broken.append(f"{name}: {type(e).__name__} {str(e).splitlines()[0][:160]}")
        conn.execute("ROLLBACK")
    return broken
