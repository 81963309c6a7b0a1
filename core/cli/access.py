"""`users` and `tokens`: who may decide, label or read, and the API tokens of the server's writing endpoints."""
from __future__ import annotations

import sys
from pathlib import Path

from core.cli.common import open_ws, principal


def _new_password(args) -> str:
    """A new user's password: from --password-file (scripts) or a prompt asked twice; never EVOLAB_PASSWORD,
    which is only ever the deciding approver's."""
    import getpass

    if args.password_file:
        text = Path(args.password_file).read_text(encoding="utf-8")
        return text[:-1] if text.endswith("\n") else text
    first = getpass.getpass(f"new password for {args.name}: ")
    if getpass.getpass("repeat it: ") != first:
        raise ValueError("the two passwords differ")
    return first


def cmd_users(args) -> int:
    from core import actions

    ws = open_ws(args)
    if args.action == "list":
        users = ws.store.users()
        print("no users yet" if users.empty else users.to_string(index=False))
        return 0
    if not args.name:
        raise ValueError(f"users {args.action} needs a NAME")
    who = principal(ws, args.by, f"user:{args.name}")
    if args.action == "add":
        if not args.role:
            raise ValueError("users add needs --role approver|labeler|viewer")
        actions.add_user(ws, who, args.name, args.role, _new_password(args))
        print(f"user {args.name} added as {args.role}")
    elif who is None:
        raise ValueError(f"users {args.action} needs --by NAME (an approver)")
    elif args.action == "set-role":
        if not args.role:
            raise ValueError("users set-role needs --role approver|labeler|viewer")
        before = actions.set_role(ws, who, args.name, args.role)
        print(f"user {args.name}: {before} -> {args.role}")
    else:
        actions.remove_user(ws, who, args.name)
        print(f"user {args.name} removed")
    return 0


def cmd_tokens(args) -> int:
    from core import actions

    ws = open_ws(args)
    if args.action == "list":
        tokens = ws.store.tokens()
        print("no tokens yet" if tokens.empty else
              tokens[["name", "prefix", "created_at", "created_by", "revoked_at", "revoked_by"]].to_string(index=False))
        return 0
    if not args.name or not args.by:
        raise ValueError(f"tokens {args.action} needs NAME and --by APPROVER")
    who = principal(ws, args.by, f"token:{args.name}")
    if args.action == "add":
        token = actions.add_token(ws, who, args.name)
        print(token)
        print(f"token '{args.name}': shown once, only its public id and a keyed hash of its secret are kept; send it as "
              "`Authorization: Bearer TOKEN`", file=sys.stderr)
    else:
        actions.revoke_token(ws, who, args.name)
        print(f"token '{args.name}' revoked")
    return 0


def register(add) -> None:
    p = add("users", cmd_users, "add, list, change the role of or remove approvers and viewers")
    p.add_argument("action", choices=["add", "list", "set-role", "remove"])
    p.add_argument("name", nargs="?")
    p.add_argument("--role", choices=["approver", "labeler", "viewer"])
    p.add_argument("--workspace", required=True)
    p.add_argument("--by", help="an approver's name (needed once the workspace has an approver)")
    p.add_argument("--password-file", help="add: read the new user's password from this file (scripts)")

    p = add("tokens", cmd_tokens, "API tokens for the server's writing endpoints: add (printed once), list, revoke")
    p.add_argument("action", choices=["add", "list", "revoke"])
    p.add_argument("name", nargs="?")
    p.add_argument("--workspace", required=True)
    p.add_argument("--by", help="an approver's name")
