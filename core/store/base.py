"""The store's connection policy and the small helpers every part of it shares.

DuckDB lets one process hold a file at a time (a second process cannot even read while a writer is
connected), so no connection outlives a call: each call opens, runs one transaction, and closes.
Lock conflicts from other processes are retried with backoff, so the engine, the dashboard, the CLI
and the server can share one workspace.

Opening the file costs about 15 ms (DuckDB builds its catalog of functions for every new database
instance), more than most calls. A burst of calls with nothing slow between them (a stage's bookkeeping,
a page's reads) shares one open file through `kept_open()`: each call still runs its own transaction, on
a connection that DuckDB hands out from the open instance for next to nothing.
"""
from __future__ import annotations

import json
import random
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import duckdb
import pandas as pd

LOCK_TIMEOUT_S = 120.0


class StoreBusy(RuntimeError):
    """Another process held the database for longer than we are willing to wait."""


class SchemaError(RuntimeError):
    """The workspace was written by a newer Evolab than this one."""


class StoreConflict(RuntimeError):
    """A write was refused because the state it expected has changed (for example a gate already decided)."""


def _where_equal(**columns) -> tuple[str, list]:
    """A WHERE clause matching every given column that is not None (column names come from the code, never
    from input), and its parameters."""
    given = {column: value for column, value in columns.items() if value is not None}
    clause = "WHERE " + " AND ".join(f"{column} = ?" for column in given) if given else ""
    return clause, list(given.values())


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _is_lock_error(err: Exception) -> bool:
    text = str(err).lower()
    return "lock" in text or "different configuration" in text


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class BaseStore:
    """All database access for one workspace file: the connection policy; each concern of the store is a mixin
    of core/store/ that reads and writes through `_tx` and `_read`."""

    # Threads of one process (the server) must not overlap connections with different settings.
    _process_lock = threading.RLock()
    # file -> (connection, read_only) of the kept_open() block holding it open, for every Store of that file
    _held: dict[str, tuple[duckdb.DuckDBPyConnection, bool]] = {}

    def __init__(self, path: Path, patience_s: float = LOCK_TIMEOUT_S):
        # patience_s: how long a call waits for another process's lock before StoreBusy (the server
        # answers 503 after a short wait rather than holding a request thread for minutes)
        self.path = Path(path)
        self.patience_s = patience_s
        self._file = str(self.path.resolve())  # one key for every spelling of the path (kept_open's)

    # -- connection policy -------------------------------------------------------------------
    @contextmanager
    def kept_open(self, read_only: bool = False) -> Iterator[None]:
        """The calls inside share one open database file instead of opening it each (see the module's note).
        Only around calls with nothing slow between them: while the block lasts no other process can open the
        file. read_only: for readers (the dashboard), which may then run no write inside."""
        if not self._process_lock.acquire(timeout=self.patience_s):
            raise StoreBusy(f"workspace database {self.path} stayed busy in this process for {self.patience_s:g}s")
        try:
            key = self._file
            if key in self._held:  # nested: the outer block's file serves
                yield
                return
            self._ensure_schema()
            self._held[key] = (self._connect(read_only), read_only)
            try:
                yield
            finally:
                self._held.pop(key)[0].close()
        finally:
            self._process_lock.release()

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        held = self._held.get(self._file)
        if held is not None:
            # DuckDB hands a second connection to a file this process has open from the same instance; one with
            # another read_only setting it would refuse, so a reader inside a writer's block reads read-write.
            return duckdb.connect(str(self.path), read_only=held[1])
        deadline = time.monotonic() + self.patience_s
        delay = 0.02
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
            except (duckdb.IOException, duckdb.ConnectionException) as err:
                if not _is_lock_error(err):
                    raise
                if time.monotonic() > deadline:
                    raise StoreBusy(f"workspace database {self.path} stayed locked by another process "
                                    f"for {self.patience_s:g}s") from None
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)

    @contextmanager
    def _tx(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        # Another thread of this process waiting for the file counts against the same patience.
        if not self._process_lock.acquire(timeout=self.patience_s):
            raise StoreBusy(f"workspace database {self.path} stayed busy in this process for {self.patience_s:g}s")
        try:
            self._ensure_schema()
            con = self._connect(read_only)
            try:
                con.execute("BEGIN TRANSACTION")
                try:
                    yield con
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
            finally:
                con.close()
        finally:
            self._process_lock.release()

    def _read(self, sql: str, params: list | None = None) -> pd.DataFrame:
        if not self.path.exists():
            raise FileNotFoundError(f"no workspace database at {self.path}")
        with self._tx(read_only=True) as con:
            return con.execute(sql, params or []).df()


def _register(con, name: str, frame: pd.DataFrame) -> None:
    # DuckDB 2 refuses register() while an earlier result is partly fetched; bulk rows go in as frames.
    con.complete()
    con.register(name, frame)


def _columns(names: list[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)  # quoted: "at" is a keyword


def _first(df: pd.DataFrame) -> dict | None:
    if df.empty:
        return None
    row = df.iloc[0].to_dict()
    return {k: (None if _isna(v) else v) for k, v in row.items()}


def _isna(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False
