"""`config`: read config.toml, set one key as an approver, or accept hand edits of governed keys."""
from __future__ import annotations

import json

from core.cli.common import open_ws, principal


def cmd_config(args) -> int:
    from core import actions

    ws = open_ws(args)
    if args.action == "get":
        from core.workspace import flatten

        values = flatten(ws.config().model_dump())
        if args.key and args.key not in values:
            raise ValueError(f"unknown config key '{args.key}'")
        for key, value in values.items():
            if not args.key or key == args.key:
                print(f"{key} = {json.dumps(value)}")
        return 0
    if args.action == "accept":
        if not args.by:
            raise ValueError("config accept needs --by APPROVER")
        from core.workspace import held_config

        if not held_config(ws):  # refused before asking for a password
            raise ValueError("no hand edit of config.toml waits for an approver")
        accepted = actions.accept_config(ws, principal(ws, args.by, "config:accept"))
        for key, change in accepted.items():
            print(f"{key}: {json.dumps(change['from'])} -> {json.dumps(change['to'])} (accepted, audited)")
        return 0
    if not args.key or args.value is None or not args.by:
        raise ValueError("config set needs KEY VALUE and --by APPROVER")
    who = principal(ws, args.by, f"config:{args.key}")
    old, new = actions.config_set(ws, who, args.key, args.value)
    print(f"{args.key}: {json.dumps(old)} -> {json.dumps(new)} (audited)")
    return 0


def register(add) -> None:
    p = add("config", cmd_config, "read config.toml, set one key as an approver (audited), or accept hand "
                                  "edits of keys that govern oversight, execution or secrets")
    p.add_argument("action", choices=["get", "set", "accept"])
    p.add_argument("key", nargs="?")
    p.add_argument("value", nargs="?")
    p.add_argument("--workspace", required=True)
    p.add_argument("--by", help="set, accept: an approver's name")
