"""`evolve` and `resume`: run evolution cycles until they end or wait at a gate."""
from __future__ import annotations

from core.cli.common import open_ws


def _print_outcome(outcome) -> None:
    print(outcome.message, flush=True)


def cmd_evolve(args) -> int:
    import time

    from core import cycle

    ws = open_ws(args)
    while True:
        outcomes = cycle.evolve(ws, args.cycles, args.auto_approve, progress=not args.quiet,
                                on_outcome=_print_outcome)
        if not (args.wait and outcomes and outcomes[-1].status == "waiting"):
            return 1 if outcomes and outcomes[-1].status == "failed" else 0
        # --wait: poll until someone decides the gate, then carry on
        from core.gates import expire_if_due

        gate_id = outcomes[-1].gate_id
        if gate_id is None:  # waiting for traffic labels: the stage looks again when evolve goes on
            time.sleep(args.poll)
        while gate_id is not None and expire_if_due(ws.store, ws.store.gate(gate_id))["status"] == "pending":
            time.sleep(args.poll)
        args.cycles = max(1, args.cycles - sum(o.status in ("done", "rejected") for o in outcomes))


def cmd_resume(args) -> int:
    from core import cycle

    outcome = cycle.resume(open_ws(args), args.auto_approve, progress=not args.quiet)
    print(outcome.message if outcome else "nothing to resume: no cycle is open")
    return 1 if outcome and outcome.status == "failed" else 0


def register(add) -> None:
    for name, fn, help_ in (("evolve", cmd_evolve, "run evolution cycles"),
                            ("resume", cmd_resume, "finish the open cycle")):
        p = add(name, fn, help_)
        p.add_argument("--workspace", required=True)
        p.add_argument("--auto-approve", action="store_true",
                       help="let gates under an automatic policy approve when their checks pass, even outside "
                            "their thresholds (recorded); a gate whose policy is human still waits for a person")
        p.add_argument("--quiet", action="store_true")
        if name == "evolve":
            p.add_argument("--cycles", type=int, default=1)
            p.add_argument("--wait", action="store_true", help="at a gate, poll until it is decided")
            p.add_argument("--poll", type=float, default=5.0)
