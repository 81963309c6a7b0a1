"""The sandbox's watchdog: limits enforced from outside the session, whatever the migration sets.

A session can switch its statement timeout off (a dynamic SET, UPDATE pg_settings), so no limit relies on it
obeying: a thread with its own admin connection cancels, then terminates, a check that runs past its
wall-clock limit, and terminates one whose clone grows past the size limit while a statement runs. Anything
stopped this way is contained, never labelled.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg

POLL_S = 0.05  # how often the watchdog looks: what a statement writes in this long is the overshoot past the size limit
GRACE_S = 1.0  # between cancelling a check past its deadline and terminating its session


@dataclass
class Watch:
    """One check in progress, as the watchdog sees it."""
    pid: int  # the clone session's backend
    dbname: str
    size0: int  # the clone's size when the check started
    deadline: float  # time.monotonic()
    tripped: str | None = None  # why the watchdog stopped it
    cancelled: float = 0.0  # when it was cancelled: terminated GRACE_S later if still running


class Watchdog:
    """The watchdog thread's loop, a base of PostgresSandbox: it reads the sandbox's checks in progress
    (`_watches`, under `_lock`), its admin `dsn`, its limits (`max_growth`, `max_growth_mb`, `wall_s`) and stops
    when `_stopping` is set."""

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
