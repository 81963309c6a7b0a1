"""The throwaway local PostgreSQL cluster the sandbox runs on: initdb and the postmaster in a private folder.

A cluster lives in a folder of its own under private_parent() (mode 0700, owned by the server's user), listens
only on a Unix socket there, and has a random superuser password held in memory only. The postmaster is our
child, its backends' address space bounded where no session can change it, and tied to the thread that started
it; a cluster whose owner died anyway (kill -9, out of memory) is stopped and removed by the next start
(sweep_orphans).
"""
from __future__ import annotations

import atexit
import ctypes
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
from dataclasses import dataclass, field
from pathlib import Path

from psycopg.conninfo import make_conninfo


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
