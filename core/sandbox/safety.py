"""What the sandbox refuses before anything runs, decided on PostgreSQL's own parse tree (pglast).

Refusing is the first of three walls: the statement is never sent; if something slips past (a dynamic
EXECUTE string is opaque to any parser), the check's role is not a superuser, owns nothing outside its clone
and can connect to nothing else; and the time and size limits, enforced from outside the session (a watchdog,
core/sandbox/watchdog.py), stop what runs too long or grows, whatever settings it changes.

screen() also splits the migration into statements and strips BEGIN/COMMIT: the sandbox runs each migration as
one transaction itself (statements that cannot run in one, such as CREATE INDEX CONCURRENTLY, run alone).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import pglast
from pglast import ast, enums

# Functions that reach outside the clone (files, other servers, other sessions, the server's settings).
DENIED_FUNCTIONS = {
    "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "pg_ls_logdir", "pg_ls_waldir",
    "pg_ls_tmpdir", "pg_ls_archive_statusdir", "lo_import", "lo_export", "pg_file_write", "pg_file_rename",
    "pg_file_unlink", "pg_logdir_ls", "dblink", "dblink_exec", "dblink_connect", "dblink_send_query",
    "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile", "pg_promote",
    "set_config", "pg_switch_wal", "pg_create_restore_point", "pg_backup_start", "pg_backup_stop",
    "pg_create_physical_replication_slot", "pg_create_logical_replication_slot", "pg_drop_replication_slot",
    "pg_replication_origin_create", "pg_import_system_collations", "current_setting_set",
}
# Settings a migration may SET; anything else (statement_timeout, work_mem, role ...) would loosen a limit.
ALLOWED_SETTINGS = {"search_path", "client_min_messages", "datestyle", "timezone", "check_function_bodies"}
TRUSTED_LANGUAGES = {"sql", "plpgsql"}
# Never run, whatever the arguments: cluster-level, file-system, network or privilege statements.
REFUSED_NODES = {
    ast.CreateExtensionStmt: "CREATE EXTENSION", ast.AlterExtensionStmt: "ALTER EXTENSION",
    ast.AlterExtensionContentsStmt: "ALTER EXTENSION", ast.CreatedbStmt: "CREATE DATABASE",
    ast.DropdbStmt: "DROP DATABASE", ast.AlterDatabaseStmt: "ALTER DATABASE",
    ast.AlterDatabaseSetStmt: "ALTER DATABASE", ast.CreateRoleStmt: "CREATE ROLE", ast.AlterRoleStmt: "ALTER ROLE",
    ast.AlterRoleSetStmt: "ALTER ROLE", ast.DropRoleStmt: "DROP ROLE", ast.GrantRoleStmt: "GRANT role",
    ast.ReassignOwnedStmt: "REASSIGN OWNED", ast.DropOwnedStmt: "DROP OWNED", ast.AlterSystemStmt: "ALTER SYSTEM",
    ast.LoadStmt: "LOAD", ast.CreateTableSpaceStmt: "CREATE TABLESPACE", ast.DropTableSpaceStmt: "DROP TABLESPACE",
    ast.AlterTableSpaceOptionsStmt: "ALTER TABLESPACE", ast.CreateFdwStmt: "CREATE FOREIGN DATA WRAPPER",
    ast.CreateForeignServerStmt: "CREATE SERVER", ast.CreateUserMappingStmt: "CREATE USER MAPPING",
    ast.ImportForeignSchemaStmt: "IMPORT FOREIGN SCHEMA", ast.CreateForeignTableStmt: "CREATE FOREIGN TABLE",
    ast.CreateSubscriptionStmt: "CREATE SUBSCRIPTION", ast.AlterSubscriptionStmt: "ALTER SUBSCRIPTION",
    ast.CreatePublicationStmt: "CREATE PUBLICATION", ast.CheckPointStmt: "CHECKPOINT",
    ast.CreateEventTrigStmt: "CREATE EVENT TRIGGER", ast.AlterOwnerStmt: "ALTER ... OWNER TO",
    ast.CreatePLangStmt: "CREATE LANGUAGE",
}
# Parsable but not supported by a sandbox that owns the transaction (it cannot be checked honestly).
UNSUPPORTED_TRANSACTION = {enums.TransactionStmtKind.TRANS_STMT_ROLLBACK, enums.TransactionStmtKind.TRANS_STMT_PREPARE,
                           enums.TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED,
                           enums.TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED}
DROPPED_TRANSACTION = {enums.TransactionStmtKind.TRANS_STMT_BEGIN, enums.TransactionStmtKind.TRANS_STMT_START,
                       enums.TransactionStmtKind.TRANS_STMT_COMMIT}
WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class Screen:
    statements: list[str] = field(default_factory=list)  # to run, in order, BEGIN/COMMIT removed
    alone: list[bool] = field(default_factory=list)  # per statement: must run outside a transaction block
    fresh: list[bool] = field(default_factory=list)  # per statement: starts a new transaction (after a COMMIT)
    refused: str | None = None  # why it must never run (an escape attempt)
    unsupported: str | None = None  # parsable, harmless, but not something the sandbox can check
    parse_error: str | None = None  # the parser's message: the migration does not parse
    relations: set[str] = field(default_factory=set)  # every table or view name the statements mention


def _names(node) -> list[str]:
    return [getattr(part, "sval", "") or "" for part in (node or ())]


def _walk(node):
    """Every AST node under node, depth first (pglast nodes, tuples of nodes, scalars skipped)."""
    if isinstance(node, tuple):
        for item in node:
            yield from _walk(item)
    elif isinstance(node, ast.Node):
        yield node
        for name in node:
            yield from _walk(getattr(node, name))


def _body_and_language(options) -> tuple[str | None, str]:
    body, language = None, "sql"
    for opt in options or ():
        if not isinstance(opt, ast.DefElem):
            continue
        if opt.defname == "language":
            language = getattr(opt.arg, "sval", str(opt.arg)).lower()
        elif opt.defname == "as":
            arg = opt.arg
            parts = arg if isinstance(arg, tuple) else (arg,)
            body = "\n".join(getattr(p, "sval", "") or "" for p in parts)
    return body, language


def _body_refusal(body: str | None, language: str, depth: int) -> str | None:
    """A function or DO body: refuse untrusted languages, then screen the SQL the body holds."""
    if language not in TRUSTED_LANGUAGES:
        return f"language {language} is not trusted (only SQL and PL/pgSQL run here)"
    if not body:
        return None
    # The body is text to the main parser; a word-level pass catches denied names even inside dynamic
    # strings it cannot parse (a false refusal of a body that merely mentions them is acceptable).
    words = {w.lower() for w in WORD.findall(body)}
    hit = sorted(words & DENIED_FUNCTIONS) or sorted(words & {"statement_timeout", "lock_timeout",
                                                             "session_authorization", "temp_file_limit"})
    if hit:
        return f"function body uses {hit[0]}"
    if language == "sql":
        try:
            return _tree_refusal(pglast.parse_sql(body), depth + 1)
        except pglast.parser.ParseError:
            return None  # PostgreSQL will reject it itself when the function is created
    return None


def _tree_refusal(stmts, depth: int = 0) -> str | None:
    if depth > 3:
        return "functions nested too deep to screen"
    for node in _walk(stmts):
        kind = type(node)
        if kind in REFUSED_NODES:
            return f"{REFUSED_NODES[kind]} is never run in the sandbox"
        if kind is ast.CopyStmt and (node.is_program or node.filename):
            return "COPY with a server file or PROGRAM reaches outside the sandbox"
        if kind is ast.VariableSetStmt and node.name and node.name.lower() not in ALLOWED_SETTINGS:
            if node.name.lower() in ("role", "session_authorization"):
                return f"SET {node.name.upper()} changes the session's role"
            return f"SET {node.name} would change a sandbox limit or server setting"
        if kind is ast.FuncCall:
            name = (_names(node.funcname) or [""])[-1].lower()
            if name in DENIED_FUNCTIONS:
                return f"{name}() reaches outside the sandbox"
        if kind is ast.RenameStmt and node.renameType in (enums.ObjectType.OBJECT_DATABASE,
                                                          enums.ObjectType.OBJECT_ROLE,
                                                          enums.ObjectType.OBJECT_TABLESPACE):
            return "renaming a database, role or tablespace is never run in the sandbox"
        if kind is ast.DropStmt and node.removeType in (enums.ObjectType.OBJECT_EXTENSION,
                                                        enums.ObjectType.OBJECT_FDW,
                                                        enums.ObjectType.OBJECT_FOREIGN_SERVER,
                                                        enums.ObjectType.OBJECT_EVENT_TRIGGER,
                                                        enums.ObjectType.OBJECT_LANGUAGE):
            return "dropping an extension, server or language is never run in the sandbox"
        if kind is ast.GrantStmt and node.objtype in (enums.ObjectType.OBJECT_DATABASE,
                                                     enums.ObjectType.OBJECT_TABLESPACE,
                                                     enums.ObjectType.OBJECT_FDW,
                                                     enums.ObjectType.OBJECT_FOREIGN_SERVER,
                                                     enums.ObjectType.OBJECT_LANGUAGE,
                                                     enums.ObjectType.OBJECT_LARGEOBJECT):
            return "GRANT on a database, tablespace, server or language is never run in the sandbox"
        if kind is ast.DoStmt:
            why = _body_refusal(*_body_and_language(node.args), depth)
            if why:
                return why
        if kind is ast.CreateFunctionStmt:
            body, language = _body_and_language(node.options)
            why = _body_refusal(body, language, depth)
            if why:
                return why
            if node.sql_body is not None:  # SQL-standard body (BEGIN ATOMIC ... END), already in the tree
                continue
            for opt in node.options or ():
                if isinstance(opt, ast.DefElem) and opt.defname == "security" and opt.arg and getattr(
                        opt.arg, "boolval", False):
                    return "SECURITY DEFINER functions are never created in the sandbox"
    return None


def _alone(stmt) -> bool:
    """Statements PostgreSQL refuses inside a transaction block."""
    if isinstance(stmt, ast.IndexStmt):
        return bool(stmt.concurrent)
    if isinstance(stmt, ast.DropStmt):
        return bool(stmt.concurrent)
    if isinstance(stmt, ast.ReindexStmt):
        return any(isinstance(o, ast.DefElem) and o.defname == "concurrently" for o in stmt.params or ())
    if isinstance(stmt, ast.VacuumStmt):
        return bool(stmt.is_vacuumcmd)
    return False


def screen(sql: str) -> Screen:
    """Parse, split and screen a migration. Exactly one of refused/unsupported/parse_error, or none."""
    try:
        raw = pglast.parse_sql(sql)
        texts = pglast.split(sql)
    except pglast.parser.ParseError as e:
        return Screen(parse_error=str(e))
    if not raw:
        return Screen(parse_error="no statement")
    out = Screen()
    why = _tree_refusal(tuple(r.stmt for r in raw))
    if why:
        out.refused = why
        return out
    out.relations = {n.relname for n in _walk(tuple(r.stmt for r in raw)) if isinstance(n, ast.RangeVar)}
    in_block = False  # inside the migration's own BEGIN ... COMMIT: PostgreSQL refuses CONCURRENTLY there
    committed = False  # the migration's own COMMIT ends a transaction: what follows starts a new one
    for r, text in zip(raw, texts):
        stmt = r.stmt
        if isinstance(stmt, ast.TransactionStmt):
            if stmt.kind in DROPPED_TRANSACTION:
                in_block = stmt.kind != enums.TransactionStmtKind.TRANS_STMT_COMMIT
                committed = committed or not in_block
                continue
            if stmt.kind in UNSUPPORTED_TRANSACTION:
                out.unsupported = "ROLLBACK or PREPARE TRANSACTION: the sandbox owns the transaction"
                return out
        if isinstance(stmt, ast.CopyStmt):  # FROM STDIN / TO STDOUT: no client data to feed it
            out.unsupported = "COPY to or from the client is not part of a migration check"
            return out
        out.statements.append(text)
        out.alone.append(_alone(stmt) and not in_block)
        out.fresh.append(committed)
        committed = False
    if not out.statements:
        out.parse_error = "no statement besides BEGIN/COMMIT"
    return out
