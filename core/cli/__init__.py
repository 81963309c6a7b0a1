"""`python -m core`: every action the dashboard has, and more. Errors are one line and a non-zero exit.

Each command group is a module here that declares its commands (`register(add)`); this one builds the parser
from them in the order `--help` lists them, holds `status` (whose `status_dict` callers reach as
`core.cli.status_dict`) and turns every failure into one line.
"""
from __future__ import annotations

import argparse
import os
import sys

from core.cli import access, audit, config, cycles, gates, inference, recovery, review, services, workspace
from core.cli.common import EXIT_ERROR, estimate_text, open_ws, print_json


def status_dict(ws) -> dict:
    from core.scaffolds.archive import production as production_scaffold

    from core import stats, traffic

    store = ws.store
    cycles = store.cycles()
    evals = {}
    if len(store.versions()):
        evals = stats.shown_estimates(store.evaluations())
    return {
        "workspace": str(ws.root),
        "production": store.alias("production"),
        "production_scaffold": production_scaffold(store)[0],
        "candidate": store.alias("candidate"),
        "labels": len(store.labels()),
        "cycles": [{"id": int(r.id), "kind": r.kind, "stage": r.stage, "status": r.status,
                    "parent": r.parent_version, "candidate": r.candidate_version,
                    "candidate_gate_estimate": evals.get(r.candidate_version),
                    "error": r.error} for r in cycles.itertuples()],
        "pending_gates": [int(g) for g in store.gates("pending")["id"]],
        "versions": {v: evals.get(v) for v in store.versions()["version"]},
        "heldout_resemblance": traffic.latest_resemblance(store),
    }


def cmd_status(args) -> int:
    from core import traffic

    info = status_dict(open_ws(args))
    if args.json:
        print_json(info)
        return 0
    print(f"workspace   {info['workspace']}")
    prod = info["production"]
    est = info["versions"].get(prod) if prod else None
    print(f"production  {prod or '-'}" + (f"  (gate estimate {estimate_text(est)})" if est else ""))
    print(f"scaffold    {info['production_scaffold']}")
    print(f"candidate   {info['candidate'] or '-'}")
    print(f"held-out    resembles traffic {traffic.describe(info['heldout_resemblance'])}")
    for c in info["cycles"]:
        est = c["candidate_gate_estimate"]
        print(f"cycle {c['id']:>3}  {c['kind']:<8} {c['status']:<8} stage={c['stage']:<8} "
              f"candidate={c['candidate'] or '-':<5} gate={estimate_text(est) if est else '-'}"
              + (f"  error: {c['error']}" if c["error"] else ""))
    if info["pending_gates"]:
        print(f"pending gates: {', '.join(map(str, info['pending_gates']))} "
              f"(python -m core gates --workspace {info['workspace']})")
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line like every other failure; the usage is one --help away
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m core", description="Evolab: a self-improving classifier under human oversight.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, fn, help_):
        p = sub.add_parser(name, help=help_)
        p.set_defaults(fn=fn)
        return p

    workspace.register(add)
    cycles.register(add)
    p = add("status", cmd_status, "production model, cycles and pending gates")
    p.add_argument("--workspace", required=True)
    p.add_argument("--json", action="store_true")
    for group in (gates, inference, recovery, review, access, config, audit, services):
        group.register(add)
    return parser


def _describe(err: BaseException) -> str:
    """An exception as one line: an OSError as its path and reason, without the [Errno n] prefix."""
    if isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    elif isinstance(err, OSError) and err.strerror:
        text = f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    else:
        text = str(err)
    return " ".join(text.split()) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from core.config import ConfigError
    from core.data import DataError
    from core.errors import ExecutorError, ModelIntegrityError, NoModelError
    from core.store import StoreBusy, StoreConflict
    from core.workspace import WorkspaceError

    from core.auth import AuthError
    from core.auditkey import AuditKeyError

    known = (AuditKeyError, AuthError, ConfigError, DataError, ExecutorError, ModelIntegrityError, NoModelError, StoreBusy,
             StoreConflict, WorkspaceError, ValueError, KeyError, OSError)
    try:
        return args.fn(args)
    except known as err:
        print(f"error: {_describe(err)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted: run `resume` to continue where it stopped", file=sys.stderr)
        return 130
    except Exception as err:  # last resort, still one line; EVOLAB_DEBUG=1 lets it through with its traceback
        if os.environ.get("EVOLAB_DEBUG"):
            raise
        print(f"error: {type(err).__name__}: {_describe(err)} (EVOLAB_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_ERROR
