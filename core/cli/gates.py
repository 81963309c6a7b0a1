"""`gates`, `approve` and `reject`: the gates with their checks, and a person's decision on one."""
from __future__ import annotations

import json

from core.cli.common import estimate_text, open_ws, principal, print_json


def cmd_gates(args) -> int:
    ws = open_ws(args)
    frame = ws.store.gates()
    rows = [{**{k: (None if v != v else v) for k, v in r.items()}, "checks": json.loads(r["checks"])}
            for r in frame.to_dict("records")]
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no gates yet")
    for g in rows:
        checks = g["checks"]
        print(f"gate {g['id']}  cycle {g['cycle_id']}  {g['kind']:<10} {g['status']:<8} policy={g['policy']}"
              + (f"  by {g['decided_by']}" if g["decided_by"] else "")
              + ("  OVERRIDE: approved although its checks failed" if g.get("override") else ""))
        if g["kind"] == "promotion" and isinstance(checks.get("candidate"), dict):
            traffic = checks.get("traffic") or {}
            print("    " + "; ".join(f"{name} {estimate_text(traffic.get(name) or checks[name])}"
                                     for name in ("candidate", "production") if checks.get(name)))
            if checks.get("resemblance"):
                from core.traffic import describe

                print(f"    held-out rows resemble traffic {describe(checks['resemblance'])}")
        print(f"    {'; '.join(checks.get('reasons', []))}")
    return 0


def cmd_decide(args) -> int:
    from core import actions

    ws = open_ws(args)
    approved = args.command == "approve"
    who = principal(ws, args.by, f"gate:{args.gate_id}")
    decided = actions.decide_gate(ws, who, args.gate_id, approved, args.comment or "",
                                  override=getattr(args, "override", False))
    print(f"gate {decided['id']} {decided['status']} by {who.name}" + (" (OVERRIDE of failed checks)"
                                                                        if decided["override"] else "")
          + f"; continue with `python -m core resume --workspace {ws.root}`")
    return 0


def register(add) -> None:
    p = add("gates", cmd_gates, "list gates with their checks")
    p.add_argument("--workspace", required=True)
    p.add_argument("--json", action="store_true")

    for name in ("approve", "reject"):
        p = add(name, cmd_decide, f"{name} a pending gate")
        p.add_argument("--workspace", required=True)
        p.add_argument("gate_id", type=int)
        p.add_argument("--by", required=True)
        p.add_argument("--comment")
        if name == "approve":
            p.add_argument("--override", action="store_true",
                           help="approve a promotion or scaffold adoption whose checks failed (needs --comment)")
