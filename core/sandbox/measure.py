"""What the sandbox measures in a clone, before and after a migration (core/sandbox/postgres.py runs it).

Measured per statement inside the migration's transaction (read before it ends): the locks the backend holds
on pre-existing relations (pg_locks) and how many tuples it has read from each table (pg_stat_xact_user_tables),
so "read the whole of orders while holding ShareLock on it" is observed, not assumed. Then: relfilenode per
table (a rewrite gives new storage), row/non-null/distinct counts of the tables it touched, and the
application queries. Every query the sandbox runs in a clone names its schema (pg_catalog, public) or runs under
a search_path it sets itself: a migration that puts a copy in front of a table it emptied (another schema on its
search_path, a temp table) must not get the copy measured.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql as S

from core.sandbox import schema


@dataclass
class Base:
    """What the template holds, measured once: the clone starts as an exact copy of it."""
    tables: dict[str, dict]  # name -> {"oid", "relfilenode", "rows", "columns": {attnum: (name, non_null, distinct)}}
    views: dict[str, int]  # name -> oid
    size: int  # bytes
    sequences: dict[str, tuple[int, bool]] = field(default_factory=dict)  # name -> (last_value, is_called)


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
