"""Migrations executed in real PostgreSQL: a throwaway cluster, a template database, clones of it.

A clone: a login role (no superuser, no CREATEDB/CREATEROLE, member of the role that owns the base objects)
and a database cloned from the template that the role owns and only it may connect to. The migration runs as
that role under a statement timeout; the admin connection never runs a query inside a clone after a migration
has run there (a migration could have planted functions for whoever reads next). A migration that is one
transaction is measured inside its transaction and rolled back, in a clone the worker keeps; anything else
(its own COMMITs, CONCURRENTLY, VACUUM) gets a fresh clone that is dropped after the check (see
PostgresSandbox).

Every executed text is hostile (texts from traffic reach execution in the SQL skill), so no limit relies on the
session obeying it: a session can switch its statement timeout off (a dynamic SET, UPDATE pg_settings). A
watchdog thread with its own admin connection cancels, then terminates, a check that runs past its wall-clock
limit, and terminates one whose clone grows past the size limit while a statement runs; a limit setting found
changed after any statement contains the migration; a local cluster bounds each backend's address space and
temp files where no session can change them. Anything stopped this way is contained, never labelled.

The parts live beside this file: cluster.py (the throwaway local cluster: initdb, the postmaster, the orphan
sweep), watchdog.py (the limits enforced from outside the session), measure.py (what is measured in a clone and
how). Their public names are importable from here as before.
"""
from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg
from psycopg import sql as S
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from core.sandbox import schema
from core.sandbox.cluster import (PR_SET_PDEATHSIG, LocalCluster, PostgresMissing,  # noqa: F401  (re-exported)
                                  find_bindir, private_parent, server_user, sweep_orphans)
from core.sandbox.measure import (CATALOG, COLUMNS, OBSERVE, PINNED, STRENGTH, Base,  # noqa: F401  (re-exported)
                                  _autocommit, _measure_after, _measure_base, _observe, _rollback, _run_app_queries,
                                  _segments, _size, _strength)
from core.sandbox.outcome import WRITE_BLOCKING, Outcome, contained, decide
from core.sandbox.safety import screen
from core.sandbox.watchdog import GRACE_S, POLL_S, Watch, Watchdog  # noqa: F401  (re-exported)

BACKEND = "postgres"
# SQLSTATEs that mean a sandbox wall stopped the migration, not that the migration failed on the data:
# 57014 statement timeout, 55P03 lock timeout, 25P03 idle timeout, 53/54 resource limits, 42501 a privilege
# outside the clone (the role owns everything inside it), 57P0x the server ended the session.
CONTAINED = {"57014": "ran past the statement timeout", "55P03": "waited past the lock timeout",
             "25P03": "idled in its transaction past the limit", "42501": "needed a privilege outside its clone"}
CONTAINED_CLASSES = {"53": "hit a resource limit", "54": "hit a program limit", "57": "was stopped by the server"}


@dataclass
class Clone:
    """A database cloned from the template, the login role that owns it, and that role's session."""
    name: str
    conn: psycopg.Connection
    pinned: str = "{}"  # JSON {setting: value} of the limits in PINNED as the session started
    checks: int = 0


class PostgresSandbox(Watchdog):
    """check(sql) -> Outcome; check_many runs `workers` clones in parallel.

    dsn: an admin connection (superuser, or CREATEDB + CREATEROLE) to a server the sandbox may create
    databases and roles on; everything it creates carries a per-sandbox prefix and is dropped by close().

    mode "rollback" (default): PostgreSQL's DDL is transactional, so a migration that is one transaction runs
    in a clone the worker keeps, is measured inside its transaction and rolled back; the base sequences are
    reset and the session discarded, which returns the clone to the template's state (a clone is recycled
    after `recycle_after` checks, after anything unusual, and whenever a migration was contained). A migration
    with its own COMMITs or statements that cannot run in a transaction (CONCURRENTLY, VACUUM) always gets a
    fresh clone, where it commits for real. mode "clone": every check gets a fresh clone (slower; the tests
    compare both).
    """

    def __init__(self, dsn: str, *, workers: int = 2, statement_timeout_ms: int = 2000,
                 wall_clock_ms: int | None = None, max_growth_mb: int = 64, strategy: str = "FILE_COPY",
                 mode: str = "rollback", recycle_after: int = 200, cluster: LocalCluster | None = None):
        self.dsn = dsn
        self.workers = max(1, workers)
        self.timeout_ms = statement_timeout_ms
        # A whole check (migration and measurement), enforced from outside the session whatever it sets.
        self.wall_s = (wall_clock_ms or 3 * statement_timeout_ms) / 1000
        self.max_growth_mb = max_growth_mb
        self.max_growth = max_growth_mb * 1024 * 1024
        self.strategy = strategy  # FILE_COPY: measured a little faster than WAL_LOG for this small template
        self.mode = mode
        self.recycle_after = recycle_after
        self.cluster = cluster
        self.prefix = f"evolab_sbx_{secrets.token_hex(4)}"
        self.base_name = f"{self.prefix}_base"
        self.owner = f"{self.prefix}_app"
        self._counter = itertools.count(1)
        self._local = threading.local()
        self._admins: list[psycopg.Connection] = []
        self._clones: list[Clone] = []
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self.base = self._build()
        self._watches: list[Watch] = []
        self._stopping = threading.Event()
        self._watchdog = threading.Thread(target=self._watch_loop, name="sandbox-watchdog", daemon=True)
        self._watchdog.start()

    @classmethod
    def local(cls, **kw) -> "PostgresSandbox":
        """Start a throwaway cluster and a sandbox on it; close() stops the cluster and removes its folder."""
        cluster = LocalCluster(max_connections=4 * kw.get("workers", 2) + 10).start()
        try:
            return cls(cluster.dsn, cluster=cluster, **kw)
        except BaseException:
            cluster.stop()
            raise

    # -- connections ---------------------------------------------------------------------------------------
    def _admin(self) -> psycopg.Connection:
        conn = getattr(self._local, "admin", None)
        if conn is None or conn.closed:
            conn = psycopg.connect(self.dsn, autocommit=True)
            self._local.admin = conn
            with self._lock:
                self._admins.append(conn)
        return conn

    def _connect(self, dbname: str, user: str | None = None, password: str | None = None, **kw):
        params = conninfo_to_dict(self.dsn)
        params["dbname"] = dbname
        if user:
            params["user"], params["password"] = user, password
        return psycopg.connect(make_conninfo(**params), **kw)

    # -- the template ---------------------------------------------------------------------------------------
    def _build(self) -> Base:
        admin = self._admin()
        admin.execute(S.SQL("CREATE ROLE {} NOLOGIN").format(S.Identifier(self.owner)))
        admin.execute(S.SQL("CREATE DATABASE {}").format(S.Identifier(self.base_name)))
        data = schema.rows()
        with self._connect(self.base_name) as conn:
            conn.execute(S.SQL("GRANT CREATE, USAGE ON SCHEMA public TO {}").format(S.Identifier(self.owner)))
            conn.execute(S.SQL("SET ROLE {}").format(S.Identifier(self.owner)))
            conn.execute(schema.POSTGRES_DDL)
            with conn.cursor() as cur:
                for table, cols in schema.TABLES.items():
                    copy = S.SQL("COPY {} ({}) FROM STDIN").format(
                        S.Identifier(table), S.SQL(", ").join(map(S.Identifier, cols)))
                    with cur.copy(copy) as cp:
                        for row in data[table]:
                            cp.write_row(row)
                for table, seq in schema.SEQUENCES.items():
                    cur.execute(S.SQL("SELECT setval({}, (SELECT coalesce(max(id), 0) + 1 FROM {}), false)")
                                .format(S.Literal(seq), S.Identifier(table)))
            conn.execute("RESET ROLE")
            conn.commit()
            conn.execute("ANALYZE")
            conn.commit()
            broken = _run_app_queries(conn)
            if broken:
                raise RuntimeError(f"the base schema breaks its own application queries: {broken}")
            base = _measure_base(conn)
        admin.execute(S.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false")
                      .format(S.Identifier(self.base_name)))
        return base

    # -- clones ----------------------------------------------------------------------------------------------
    def _new_clone(self) -> Clone:
        """A login role (no superuser, no CREATEDB/CREATEROLE, member of the base objects' owner) and a clone
        it owns and only it may connect to, with its session open under the sandbox's limits."""
        name = f"{self.prefix}_c{next(self._counter)}"
        password = secrets.token_urlsafe(18)
        admin = self._admin()
        ident = S.Identifier(name)
        admin.execute(S.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS "
                            "CONNECTION LIMIT 2 PASSWORD {} IN ROLE {}")
                      .format(ident, S.Literal(password), S.Identifier(self.owner)))
        try:
            admin.execute(S.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {} STRATEGY {}").format(
                ident, S.Identifier(self.base_name), ident, S.SQL(self.strategy)))
            admin.execute(S.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(ident))
            options = (f"-c statement_timeout={self.timeout_ms} -c lock_timeout={self.timeout_ms} -c timezone=UTC "
                       f"-c idle_in_transaction_session_timeout={10 * self.timeout_ms} -c work_mem=4MB "
                       "-c maintenance_work_mem=64MB -c temp_buffers=8MB -c hash_mem_multiplier=2")
            conn = self._connect(name, name, password, options=options, autocommit=True)
            # The limits as the session starts, before any migration: a later value that differs was changed.
            pinned = conn.execute("SELECT name, setting FROM pg_catalog.pg_settings WHERE name = ANY(%s)",
                                  [list(PINNED)]).fetchall()
            clone = Clone(name, conn, json.dumps(dict(pinned)))
        except BaseException:
            self._drop(name)
            raise
        with self._lock:
            self._clones.append(clone)
        return clone

    def _drop(self, name: str) -> None:
        admin = self._admin()
        admin.execute(S.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(S.Identifier(name)))
        admin.execute(S.SQL("DROP ROLE IF EXISTS {}").format(S.Identifier(name)))

    def _retire(self, clone: Clone) -> None:
        try:
            clone.conn.close()
        finally:
            self._drop(clone.name)
            with self._lock:
                if clone in self._clones:
                    self._clones.remove(clone)
            if getattr(self._local, "clone", None) is clone:
                self._local.clone = None

    def _worker_clone(self) -> Clone:
        clone = getattr(self._local, "clone", None)
        if clone is not None and (clone.conn.closed or clone.checks >= self.recycle_after):
            self._retire(clone)
            clone = None
        if clone is None:
            clone = self._local.clone = self._new_clone()
        return clone

    def _reset(self, clone: Clone) -> None:
        """After a rolled-back check: undo what a rollback does not (sequence values, session state), then
        confirm the clone is the template again (same relations, same storage) or retire it."""
        conn = clone.conn
        _autocommit(conn, True)
        conn.execute(self._sequence_reset)
        conn.execute("DISCARD ALL")
        now = {name: node for _, name, node, kind in conn.execute(CATALOG).fetchall() if kind in ("r", "p")}
        if now != {name: t["relfilenode"] for name, t in self.base.tables.items()}:
            self._retire(clone)

    @property
    def _sequence_reset(self):
        return S.SQL("SELECT {}").format(S.SQL(", ").join(
            S.SQL("pg_catalog.setval({}, {}, {})").format(S.Literal(f"public.{seq}"), S.Literal(value),
                                                           S.Literal(called))
            for seq, (value, called) in self.base.sequences.items()))

    # -- one check -------------------------------------------------------------------------------------------
    def check(self, migration: str) -> Outcome:
        start = time.perf_counter()
        out = self._check(migration)
        out.seconds = round(time.perf_counter() - start, 4)
        return out

    def check_many(self, migrations: list[str]) -> list[Outcome]:
        """Outcomes in input order; `workers` clones at a time (the worker threads and their clones persist
        across calls until close())."""
        if self.workers == 1 or len(migrations) < 2:
            return [self.check(m) for m in migrations]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox")
        return list(self._pool.map(self.check, migrations))

    def _check(self, migration: str) -> Outcome:
        try:
            return self._check_screened(migration)
        except psycopg.OperationalError as e:  # the server, not the migration: one check lost, not the batch
            return Outcome(None, f"sandbox error: {str(e)[:300]}", backend=BACKEND)

    def _check_screened(self, migration: str) -> Outcome:
        scr = screen(migration)
        if scr.parse_error:
            return Outcome("fails", f"does not parse: {scr.parse_error}", sqlstate="42601",
                           error=scr.parse_error, backend=BACKEND)
        if scr.refused:
            return contained(f"refused before execution: {scr.refused}", backend=BACKEND)
        if scr.unsupported:
            return Outcome(None, f"unsupported: {scr.unsupported}", backend=BACKEND)
        one_transaction = len(_segments(scr)) == 1 and not any(scr.alone)
        if self.mode == "rollback" and one_transaction:
            clone = self._worker_clone()
            clone.checks += 1
            try:
                out = self._run(clone, scr, commit=False)
                if not out.escape:
                    self._reset(clone)
            except BaseException:
                self._retire(clone)
                raise
            if out.escape or clone.conn.closed:
                self._retire(clone)  # whatever it tried, the next check starts from a new clone
            return out
        clone = self._new_clone()
        try:
            return self._run(clone, scr, commit=True)
        finally:
            self._retire(clone)

    def _run(self, clone: Clone, scr, *, commit: bool) -> Outcome:
        """Run and measure under the watchdog; whatever the session reports, a check the watchdog had to stop is
        contained (a PL/pgSQL handler can swallow a cancel and carry on as if nothing happened)."""
        conn = clone.conn
        _autocommit(conn, True)
        size0 = _size(conn)
        watch = Watch(conn.info.backend_pid, clone.name, size0, time.monotonic() + self.wall_s)
        with self._lock:
            self._watches.append(watch)
        try:
            out = self._execute(conn, scr, clone.pinned, size0, commit=commit)
        finally:
            with self._lock:  # under the lock: the watchdog acts only on a check still registered
                self._watches.remove(watch)
        if watch.tripped:
            _rollback(conn)
            return contained(f"stopped from outside the session: {watch.tripped}", backend=BACKEND,
                             statements=len(scr.statements))
        return out

    def _execute(self, conn: psycopg.Connection, scr, pinned: str, size0: int, *, commit: bool) -> Outcome:
        """Run and measure. commit=False: one transaction, measured and then rolled back (the caller resets)."""
        base = self.base
        oids = [t["oid"] for t in base.tables.values()] + list(base.views.values())
        by_oid = {t["oid"]: name for name, t in base.tables.items()} | {o: n for n, o in base.views.items()}
        locks: dict[str, set[str]] = {}
        blocking: list[str] = []
        unobserved = 0
        n = len(scr.statements)
        try:
            for alone, stmts in _segments(scr):
                if alone:  # CREATE INDEX CONCURRENTLY, VACUUM ...: PostgreSQL refuses them in a transaction
                    _autocommit(conn, True)
                    conn.execute(stmts[0])
                    unobserved += 1
                    continue
                _autocommit(conn, False)
                # The counters include reads of earlier transactions not yet flushed to the shared stats:
                # the baseline is read inside this transaction, where no flush happens.
                _, read, _ = _observe(conn, oids, pinned)
                for stmt in stmts:
                    conn.execute(stmt)
                    held, read_now, changed = _observe(conn, oids, pinned)
                    if changed:
                        conn.rollback()
                        return contained(f"changed a sandbox limit: {', '.join(sorted(changed))}",
                                         backend=BACKEND, statements=n)
                    for oid, modes in held.items():
                        locks.setdefault(by_oid[oid], set()).update(modes)
                    for oid, tuples in read_now.items():
                        name = by_oid[oid]
                        rows = base.tables[name]["rows"]
                        strong = held.get(oid, set()) & WRITE_BLOCKING
                        if (rows >= schema.LARGE_TABLE_ROWS and tuples - read.get(oid, 0) >= rows and strong
                                and not any(b.startswith(f"{name}:") for b in blocking)):
                            blocking.append(f"{name}: all {rows} rows read under {max(strong, key=_strength)}")
                    read = read_now
                # Deferred constraints would be checked at COMMIT: check them now, inside the transaction.
                conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
                size = _size(conn)
                if size - size0 > self.max_growth:
                    conn.rollback()
                    return contained(f"grew the database by {(size - size0) >> 20} MB, over the "
                                     f"{self.max_growth_mb} MB limit", backend=BACKEND, statements=n)
                if commit:
                    conn.commit()
        except psycopg.Error as e:
            _rollback(conn)
            state = e.sqlstate
            why = CONTAINED.get(state or "") or CONTAINED_CLASSES.get((state or "")[:2])
            if why or state is None:
                return contained(f"stopped: {why or 'the session ended'}", backend=BACKEND, sqlstate=state,
                                 error=str(e)[:500], statements=n)
            label, reason = decide(error=str(e), sqlstate=state, counts={}, dropped=[], broken_queries=[],
                                   rewritten=[], blocking_scans=[])
            return Outcome(label, reason, sqlstate=state, error=str(e)[:500], backend=BACKEND, statements=n,
                           locks=sorted(f"{t}: {m}" for t, ms in locks.items() for m in ms))
        _autocommit(conn, False)  # commit=False: still inside the migration's transaction
        try:
            # The migration may have put its own schema or pg_temp in front: measure under our search_path (the
            # application queries too; their tables are public's), every table named with its schema besides.
            conn.execute("SET search_path = pg_catalog, public, pg_temp")
            # Tables the migration took no lock on cannot have changed; a statement run outside a transaction
            # was not observed, so then every table is counted again.
            touched = set(base.tables) if unobserved else set(locks) & set(base.tables)
            counts, dropped, rewritten = _measure_after(conn, base, touched)
            broken = _run_app_queries(conn)  # each in a savepoint; ends with a rollback (of the migration too)
        except psycopg.Error as e:
            _rollback(conn)
            return contained(f"stopped while measuring: {e.sqlstate} {str(e)[:200]}", backend=BACKEND,
                             sqlstate=e.sqlstate, statements=n)
        label, reason = decide(error=None, sqlstate=None, counts=counts, dropped=dropped, broken_queries=broken,
                               rewritten=rewritten, blocking_scans=blocking)
        if unobserved and label == "safe":
            reason += f" ({unobserved} statement(s) ran outside a transaction: their locks were not observed)"
        return Outcome(label, reason, counts=counts, broken_queries=broken, rewritten=rewritten,
                       locks=sorted(f"{t}: {m}" for t, ms in locks.items() for m in ms), blocking_scans=blocking,
                       backend=BACKEND, statements=n)

    # -- cleanup ---------------------------------------------------------------------------------------------
    def leftovers(self) -> dict[str, list[str]]:
        """Clone databases and roles of this sandbox that exist now (besides the template and its owner)."""
        admin = self._admin()
        like = f"{self.prefix}\\_c%"
        dbs = [r[0] for r in admin.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", [like])]
        roles = [r[0] for r in admin.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s", [like])]
        return {"databases": dbs, "roles": roles}

    def close(self) -> None:
        """Drop every clone, role and the template this sandbox made; stop its own cluster if it has one."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._stopping.set()
            self._watchdog.join()
            for clone in list(self._clones):
                clone.conn.close()
            admin = self._admin()
            left = self.leftovers()
            for db in left["databases"]:
                admin.execute(S.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(S.Identifier(db)))
            for role in left["roles"]:
                admin.execute(S.SQL("DROP ROLE IF EXISTS {}").format(S.Identifier(role)))
            admin.execute(S.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(S.Identifier(self.base_name)))
            admin.execute(S.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(S.Identifier(self.base_name)))
            admin.execute(S.SQL("DROP ROLE IF EXISTS {}").format(S.Identifier(self.owner)))
        finally:
            for conn in self._admins:
                conn.close()
            if self.cluster is not None:
                self.cluster.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
