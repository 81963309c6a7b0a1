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

Measured per statement inside the migration's transaction (read before it ends): the locks the backend holds
on pre-existing relations (pg_locks) and how many tuples it has read from each table (pg_stat_xact_user_tables),
so "read the whole of orders while holding ShareLock on it" is observed, not assumed. Then: relfilenode per
table (a rewrite gives new storage), row/non-null/distinct counts of the tables it touched, and the
application queries. Every query the sandbox runs in a clone names its schema (pg_catalog, public) or runs under
a search_path it sets itself: a migration that puts a copy in front of a table it emptied (another schema on its
search_path, a temp table) must not get the copy measured.
"""
from __future__ import annotations

import atexit
import ctypes
import itertools
import json
import os
import pwd
import resource
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql as S
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from core.sandbox import schema
from core.sandbox.outcome import WRITE_BLOCKING, Outcome, contained, decide
from core.sandbox.safety import screen

BACKEND = "postgres"
POLL_S = 0.05  # how often the watchdog looks: what a statement writes in this long is the overshoot past the size limit
GRACE_S = 1.0  # between cancelling a check past its deadline and terminating its session
# SQLSTATEs that mean a sandbox wall stopped the migration, not that the migration failed on the data:
# 57014 statement timeout, 55P03 lock timeout, 25P03 idle timeout, 53/54 resource limits, 42501 a privilege
# outside the clone (the role owns everything inside it), 57P0x the server ended the session.
CONTAINED = {"57014": "ran past the statement timeout", "55P03": "waited past the lock timeout",
             "25P03": "idled in its transaction past the limit", "42501": "needed a privilege outside its clone"}
CONTAINED_CLASSES = {"53": "hit a resource limit", "54": "hit a program limit", "57": "was stopped by the server"}


class PostgresMissing(RuntimeError):
    pass


def find_bindir() -> Path:
    """The folder holding initdb and pg_ctl: PATH first, then Debian's versioned folders."""
    for name in ("initdb", "pg_ctl"):
        found = shutil.which(name)
        if found and Path(found).resolve().parent.joinpath("pg_ctl").exists():
            return Path(found).resolve().parent
    # Debian keeps the server binaries out of PATH, one folder per major version: the newest wins.
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name)
                      if p.parent.name.isdigit() else 0, reverse=True)
    for candidate in versions:
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    raise PostgresMissing("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in "
                          "/usr/lib/postgresql/*/bin; install Debian's `postgresql` package (.ci/run does)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_user() -> dict:
    """Popen's user/group for the server's processes: initdb refuses to run as root, so as root the server runs as
    the `postgres` user (else `nobody`); {} when we are not root (the server runs as us)."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
            return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        except KeyError:
            continue
    raise PostgresMissing("running as root and neither `postgres` nor `nobody` exists to run the server")


def _private(path: Path, uid: int) -> bool:
    """A real folder (not a link) of uid that nobody else may enter or write."""
    st = os.lstat(path)
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o077


def private_parent() -> Path:
    """The folder every throwaway cluster of the server's user lives in, under the shared temp folder: made mode
    0700 and owned by that user, and refused when it is anything else (another local user made it first, or
    planted a link), so nobody else can put a cluster-looking folder where the orphan sweep looks."""
    who = server_user()
    uid = who.get("user", os.geteuid())
    parent = Path(tempfile.gettempdir()) / f"evolab-sandbox-{uid}"
    try:
        os.mkdir(parent, 0o700)
        if who:
            os.chown(parent, uid, who["group"])
    except FileExistsError:
        pass
    if not _private(parent, uid):
        raise RuntimeError(f"{parent} is not a private folder of uid {uid} (a link, another owner, or open to "
                           "others): remove it and start again")
    return parent


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whoever adopted it to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _postmaster(data: Path) -> int | None:
    """The pid in data/postmaster.pid when it is that cluster's running postmaster: a process of the server's
    user whose command line is `postgres -D <data>`. None for anything else: a stale file whose pid now belongs
    to another process is never signalled. Needs /proc (Linux); elsewhere nothing is signalled."""
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        argv = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
        owner = os.stat(f"/proc/{pid}").st_uid
    except (OSError, ValueError, IndexError):
        return None
    if owner != server_user().get("user", os.geteuid()) or Path(argv[0]).name != "postgres":
        return None
    return pid if any(a == "-D" and b == str(data) for a, b in zip(argv, argv[1:])) else None


def sweep_orphans() -> list[Path]:
    """Stop and remove the throwaway clusters whose owner died without stopping them (killed with SIGKILL, out of
    memory): a cluster is left running only by a dead owner, never by a live one. Only folders in the private
    parent, of the server's user, mode 0700, are looked at, and only a verified postmaster is signalled.
    Returns what was removed."""
    uid = server_user().get("user", os.geteuid())
    removed = []
    for root in private_parent().iterdir():
        try:
            if not _private(root, uid):
                continue  # not made by LocalCluster.start
            owner = int((root / "owner.pid").read_text())
        except (OSError, ValueError):
            continue  # not ours to judge: no owner recorded
        if _pid_alive(owner):
            continue
        pid = _postmaster(root / "data")
        if pid is not None:
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown: nothing in a thrown-away cluster is worth a checkpoint
            deadline = time.monotonic() + 10
            while _running(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        shutil.rmtree(root, ignore_errors=True)
        removed.append(root)
    return removed


def _server_limits(parent: int, memory_bytes: int, tie: bool):
    """Run in the server's process between fork and exec: bound every backend's address space (inherited from
    the postmaster; no setting a session can change does this), and, when asked, have the kernel stop the
    postmaster (SIGINT: fast shutdown) when the thread that started it dies, so a kill -9 of the owner does not
    leave a cluster running. The kernel ties the signal to the starting thread, not the process: only the
    main thread asks for it."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl if tie and sys.platform.startswith("linux") else None

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGINT)
            if os.getppid() != parent:  # the owner died before the tie was made
                os._exit(1)
    return limit


PR_SET_PDEATHSIG = 1


@dataclass
class LocalCluster:
    """A throwaway cluster in a private folder (private_parent()), listening only on a Unix socket inside that
    folder, with password authentication: a random superuser password held in memory only, so a cluster that
    outlives its owner is open to nobody. As root the server runs as `postgres` (else `nobody`)."""
    bindir: Path = field(default_factory=find_bindir)
    root: Path | None = None
    port: int = 0
    admin: str = "evolab_admin"
    max_connections: int = 40
    backend_memory_mb: int = 1024  # address space of each server process: a migration cannot allocate past it
    pid: int | None = None
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    def _run(self, *args: str) -> None:
        done = subprocess.run([str(self.bindir / args[0]), *args[1:]], capture_output=True, text=True,
                              timeout=120, cwd=self.root, **server_user())
        if done.returncode:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr[-2000:]} {self._log_tail()}")

    def _log_tail(self) -> str:
        log = (self.root / "server.log") if self.root else None
        return log.read_text(errors="replace")[-2000:] if log and log.exists() else ""

    def start(self) -> "LocalCluster":
        sweep_orphans()
        who = server_user()
        self.root = Path(tempfile.mkdtemp(prefix="cluster-", dir=private_parent()))  # mode 0700
        # Whose cluster this is: a later start stops it if this process died without stopping it (kill -9).
        (self.root / "owner.pid").write_text(str(os.getpid()))
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password)
        if who:
            for path in (self.root, pwfile):
                os.chown(path, who["user"], who["group"])
        self.port = self.port or _free_port()
        data = self.root / "data"
        try:
            self._run("initdb", "-D", str(data), "-U", self.admin, "-A", "scram-sha-256", f"--pwfile={pwfile}",
                      "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
        finally:
            pwfile.unlink(missing_ok=True)
        # Throwaway: durability off (a crash loses nothing of value), no TCP, nothing in the background that
        # would rewrite a table behind a check's back (autovacuum), no JIT (its memory would count against the
        # backends' bound), and the limits a session cannot change (temp_file_limit is superuser-only).
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(f"""
listen_addresses = ''
unix_socket_directories = '{self.root}'
port = {self.port}
max_connections = {self.max_connections}
shared_buffers = 64MB
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = minimal
max_wal_senders = 0
max_wal_size = 2GB
autovacuum = off
jit = off
temp_file_limit = 64MB
log_min_messages = warning
timezone = 'UTC'
log_min_error_statement = panic
""")
        # The admin connects to anything; every other role only to the database named like itself (its clone);
        # everyone with a password.
        (data / "pg_hba.conf").write_text(f"local all {self.admin} scram-sha-256\nlocal sameuser all scram-sha-256\n")
        # The postmaster is our child (not pg_ctl's daemon), in its own session so a Ctrl+C meant for us does not
        # reach it before our own cleanup does.
        with open(self.root / "server.log", "ab") as log:
            self._proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(data)], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True, **who,
                preexec_fn=_server_limits(os.getpid(), self.backend_memory_mb << 20,
                                          threading.current_thread() is threading.main_thread()))
        self.pid = self._proc.pid
        atexit.register(self.stop)
        deadline = time.monotonic() + 60
        while not self._ready(data):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = self._log_tail()
                self.stop()
                raise RuntimeError(f"postgres did not start: {tail}")
            time.sleep(0.05)
        return self

    @staticmethod
    def _ready(data: Path) -> bool:
        """postmaster.pid's eighth line says `ready` once the server accepts connections (what pg_ctl -w reads)."""
        try:
            lines = (data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) > 7 and lines[7].strip() == "ready"

    @property
    def dsn(self) -> str:
        return make_conninfo(host=str(self.root), port=str(self.port), user=self.admin, dbname="postgres",
                             password=self.password)

    def stop(self) -> None:
        """Stop the server (fast shutdown, immediate if that hangs) and remove its folder; idempotent."""
        if self.root is None:
            return
        try:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.send_signal(signal.SIGINT)
                try:
                    self._proc.wait(60)
                except subprocess.TimeoutExpired:
                    self._proc.send_signal(signal.SIGQUIT)
                    self._proc.wait(30)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


@dataclass
class Base:
    """What the template holds, measured once: the clone starts as an exact copy of it."""
    tables: dict[str, dict]  # name -> {"oid", "relfilenode", "rows", "columns": {attnum: (name, non_null, distinct)}}
    views: dict[str, int]  # name -> oid
    size: int  # bytes
    sequences: dict[str, tuple[int, bool]] = field(default_factory=dict)  # name -> (last_value, is_called)


@dataclass
class Clone:
    """A database cloned from the template, the login role that owns it, and that role's session."""
    name: str
    conn: psycopg.Connection
    pinned: str = "{}"  # JSON {setting: value} of the limits in PINNED as the session started
    checks: int = 0


@dataclass
class Watch:
    """One check in progress, as the watchdog sees it."""
    pid: int  # the clone session's backend
    dbname: str
    size0: int  # the clone's size when the check started
    deadline: float  # time.monotonic()
    tripped: str | None = None  # why the watchdog stopped it
    cancelled: float = 0.0  # when it was cancelled: terminated GRACE_S later if still running


class PostgresSandbox:
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

    # -- the watchdog -----------------------------------------------------------------------------------------
    def _watch_loop(self) -> None:
        """Every POLL_S, from its own admin connection (never inside a clone): terminate a check whose clone
        grew past the size limit, cancel one past its wall-clock deadline and terminate it GRACE_S later if it is
        still running. A session cannot switch any of this off."""
        conn = None
        while not self._stopping.wait(POLL_S):
            with self._lock:
                if not self._watches:
                    continue
                names = [w.dbname for w in self._watches]
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.dsn, autocommit=True)
                sizes = dict(conn.execute("SELECT d, pg_database_size(d) FROM unnest(%s::text[]) AS d",
                                          [names]).fetchall())
                now = time.monotonic()
                with self._lock:  # a check that ended meanwhile is no longer listed: its session is not touched
                    for w in self._watches:
                        if w.tripped is None and sizes.get(w.dbname, 0) - w.size0 > self.max_growth:
                            w.tripped = f"grew the database past the {self.max_growth_mb} MB limit while running"
                            conn.execute("SELECT pg_terminate_backend(%s)", [w.pid])
                        elif w.tripped is None and now > w.deadline:
                            w.tripped, w.cancelled = f"ran past the wall-clock limit ({self.wall_s:g} s)", now
                            conn.execute("SELECT pg_cancel_backend(%s)", [w.pid])
                        elif w.cancelled and now > w.cancelled + GRACE_S:
                            w.cancelled = 0.0
                            conn.execute("SELECT pg_terminate_backend(%s)", [w.pid])
            except psycopg.Error:
                if conn is not None:
                    conn.close()  # a clone dropped between the listing and the size query, a lost connection
                conn = None
        if conn is not None:
            conn.close()

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


# -- measuring ---------------------------------------------------------------------------------------------
STRENGTH = ["AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock",
            "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"]


def _strength(mode: str) -> int:
    return STRENGTH.index(mode) if mode in STRENGTH else -1


def _segments(scr) -> list[tuple[bool, list[str]]]:
    """Consecutive transactional statements form one transaction, up to the migration's own COMMIT; each
    statement that cannot run in one stands alone."""
    out: list[tuple[bool, list[str]]] = []
    for stmt, alone, fresh in zip(scr.statements, scr.alone, scr.fresh):
        if alone or fresh or not out or out[-1][0]:
            out.append((alone, [stmt]))
        else:
            out[-1][1].append(stmt)
    return out


# Settings that are sandbox limits but that any session may change: a value that differs from the session's
# starting one after a statement contains the migration (what changes them inside one statement meets the
# watchdog instead).
PINNED = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout", "work_mem",
          "maintenance_work_mem", "temp_buffers", "hash_mem_multiplier", "temp_file_limit")
# Runs between the migration's statements, under whatever search_path it set: every relation, function, type and
# operator is named with its schema, so nothing the migration created can stand in for them.
OBSERVE = (
    "SELECT 'l', l.relation::pg_catalog.int8, l.mode, 0::pg_catalog.int8 FROM pg_catalog.pg_locks l "
    "WHERE l.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid() AND l.granted "
    "AND l.locktype OPERATOR(pg_catalog.=) 'relation' "
    "AND l.relation OPERATOR(pg_catalog.=) ANY(%(o)s::pg_catalog.oid[]) "
    "UNION ALL SELECT 's', s.relid::pg_catalog.int8, '', s.seq_tup_read FROM pg_catalog.pg_stat_xact_user_tables s "
    "WHERE s.relid OPERATOR(pg_catalog.=) ANY(%(o)s::pg_catalog.oid[]) "
    "UNION ALL SELECT 'g', 0, g.name, 0 FROM pg_catalog.pg_settings g "
    "JOIN pg_catalog.jsonb_each_text(%(p)s::pg_catalog.jsonb) AS p(name, value) "
    "ON g.name OPERATOR(pg_catalog.=) p.name "
    "WHERE g.setting OPERATOR(pg_catalog.<>) p.value")


def _observe(conn, oids: list[int], pinned: str) -> tuple[dict[int, set[str]], dict[int, int], list[str]]:
    """The locks this backend holds on the base relations, the tuples it has read from each so far in this
    transaction, and the pinned limits whose value changed (one round trip)."""
    rows = conn.execute(OBSERVE, {"o": oids, "p": pinned}).fetchall()
    held: dict[int, set[str]] = {}
    read: dict[int, int] = {}
    changed: list[str] = []
    for kind, oid, name, tuples in rows:
        if kind == "l":
            held.setdefault(oid, set()).add(name)
        elif kind == "s":
            read[oid] = tuples
        else:
            changed.append(name)
    return held, read, changed


def _size(conn) -> int:
    return conn.execute("SELECT pg_catalog.pg_database_size(pg_catalog.current_database())").fetchone()[0]


CATALOG = ("SELECT c.oid::int8, c.relname, c.relfilenode::int8, c.relkind FROM pg_catalog.pg_class c "
           "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')")
COLUMNS = ("SELECT attrelid::int8, attnum, attname FROM pg_catalog.pg_attribute WHERE attrelid = ANY(%s::oid[]) "
           "AND attnum > 0 AND NOT attisdropped ORDER BY attnum")


def _count(conn, table: str, columns: list[str]) -> tuple[int, list[tuple[int, int]]]:
    """Rows, and non-null and distinct values per column, of public's table: the functions named with their
    schema, since a public count(sometype) would be an exact match that beats pg_catalog's count("any")."""
    parts = [S.SQL("pg_catalog.count(*)")]
    for col in columns:
        parts += [S.SQL("pg_catalog.count({})").format(S.Identifier(col)),
                  S.SQL("pg_catalog.count(DISTINCT {}::pg_catalog.text)").format(S.Identifier(col))]
    row = conn.execute(S.SQL("SELECT {} FROM {}").format(S.SQL(", ").join(parts),
                                                         S.Identifier("public", table))).fetchone()
    return row[0], [(row[1 + 2 * i], row[2 + 2 * i]) for i in range(len(columns))]


def _measure_base(conn) -> Base:
    tables, views = {}, {}
    catalog = conn.execute(CATALOG).fetchall()
    for oid, name, node, kind in catalog:
        if kind in ("v", "m"):
            views[name] = oid
            continue
        cols = {num: col for _, num, col in conn.execute(COLUMNS, [[oid]]).fetchall()}
        rows, values = _count(conn, name, list(cols.values()))
        tables[name] = {"oid": oid, "relfilenode": node, "rows": rows,
                        "columns": {num: (col, *v) for (num, col), v in zip(cols.items(), values)}}
    size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    sequences = {name: tuple(conn.execute(S.SQL("SELECT last_value, is_called FROM {}").format(S.Identifier(name)))
                             .fetchone()) for (name,) in conn.execute(
        "SELECT relname FROM pg_class WHERE relkind = 'S' AND relnamespace = 'public'::regnamespace").fetchall()}
    conn.rollback()
    return Base(tables=tables, views=views, size=size, sequences=sequences)


def _measure_after(conn, base: Base, touched: set[str]):
    """counts (touched tables only), dropped (tables that held rows and are gone) and rewritten (large tables
    whose storage changed). A table is followed by name first (a swap keeps the name), else by oid (a rename
    keeps the oid); a column by name, else by position in the same table."""
    catalog = conn.execute(CATALOG).fetchall()
    by_name = {name: (oid, node) for oid, name, node, kind in catalog if kind in ("r", "p")}
    by_oid = {oid: (name, node) for oid, name, node, kind in catalog if kind in ("r", "p")}
    counts, dropped, rewritten = {}, [], []
    for name, t in base.tables.items():
        if name in by_name:
            oid, node = by_name[name]
            now = name
        elif t["oid"] in by_oid:
            oid = t["oid"]
            now, node = by_oid[oid]
        else:
            if t["rows"]:
                dropped.append(f"{name}: table with {t['rows']} rows dropped")
            continue
        if node != t["relfilenode"] and t["rows"] >= schema.LARGE_TABLE_ROWS:
            rewritten.append(name)
        if name not in touched:
            continue
        cols = {num: col for _, num, col in conn.execute(COLUMNS, [[oid]]).fetchall()}
        names = set(cols.values())
        follow = {}
        for num, (col, _, _) in t["columns"].items():
            if col in names:
                follow[num] = col
            elif oid == t["oid"] and num in cols:
                follow[num] = cols[num]
        present = list(dict.fromkeys(follow.values()))
        rows, values = _count(conn, now, present)
        got = dict(zip(present, values))
        columns = {}
        for num, (col, non_null, distinct) in t["columns"].items():
            after = got.get(follow.get(num)) if num in follow else None
            columns[col] = {"non_null": [non_null, after[0] if after else None],
                            "distinct": [distinct, after[1] if after else None]}
        counts[name] = {"rows": [t["rows"], rows], "columns": columns}
    return counts, dropped, rewritten


def _run_app_queries(conn) -> list[str]:
    """Each application query in its own savepoint; all of it rolled back. Returns 'name: error' per failure."""
    broken = []
    _autocommit(conn, False)
    for name, query in schema.APP_QUERIES.items():
        conn.execute("SAVEPOINT app")
        try:
            conn.execute(query).fetchall() if query.lstrip().upper().startswith("SELECT") else conn.execute(query)
            conn.execute("RELEASE SAVEPOINT app")
        except psycopg.Error as e:
            if e.sqlstate in ("57014",) or e.sqlstate is None:
                raise
            conn.execute("ROLLBACK TO SAVEPOINT app")
            broken.append(f"{name}: {e.sqlstate} {str(e).splitlines()[0][:160]}")
    conn.rollback()
    return broken


def _autocommit(conn, value: bool) -> None:
    """psycopg refuses to set autocommit inside a transaction even to its current value."""
    if conn.autocommit != value:
        conn.autocommit = value


def _rollback(conn) -> None:
    try:
        if not conn.closed and not conn.autocommit:
            conn.rollback()
    except psycopg.Error:
        pass
