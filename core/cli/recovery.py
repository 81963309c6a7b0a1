"""`abandon` and `rollback`: an approver closes a stuck cycle or points production back at an earlier version."""
from __future__ import annotations

from core.cli.common import open_ws, principal


def cmd_abandon(args) -> int:
    from core import actions

    ws = open_ws(args)
    cycle = actions.abandon_cycle(ws, principal(ws, args.by, f"cycle:{args.cycle}"), args.cycle, args.comment)
    print(f"cycle {args.cycle} abandoned at its {cycle['stage']} stage ({cycle['error']}); "
          f"production stays {ws.store.alias('production') or '-'}")
    return 0


def cmd_rollback(args) -> int:
    from core import actions

    ws = open_ws(args)
    previous = actions.rollback(ws, principal(ws, args.by, f"rollback:{args.to}"), args.to)
    print(f"production: {previous or '-'} -> {args.to}")
    return 0


def register(add) -> None:
    p = add("abandon", cmd_abandon, "close a stuck open cycle (an approver); nothing it made ships")
    p.add_argument("--workspace", required=True)
    p.add_argument("--cycle", type=int, required=True)
    p.add_argument("--by", required=True, help="an approver's name (password from a prompt or EVOLAB_PASSWORD)")
    p.add_argument("--comment", default="", help="why (kept in the audit log)")

    p = add("rollback", cmd_rollback, "point production at an earlier version")
    p.add_argument("--workspace", required=True)
    p.add_argument("--to", required=True)
    p.add_argument("--by", required=True, help="an approver's name (password from a prompt or EVOLAB_PASSWORD)")
