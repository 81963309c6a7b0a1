"""`audit`: show the audit log, verify its keyed chain (in a workspace or an exported copy), or export it."""
from __future__ import annotations

import sys
from pathlib import Path

from core.cli.common import EXIT_ERROR, open_ws


def cmd_audit(args) -> int:
    from core import audit

    if args.action == "verify":
        if bool(args.workspace) == bool(args.file):
            raise ValueError("audit verify needs --workspace W or --file FILE.jsonl (one of them)")
        report = (audit.verify_file(Path(args.file), args.accept_legacy) if args.file
                  else audit.verify(open_ws(args).store, args.accept_legacy))
        if not report.ok:
            print(f"audit log {report.case.upper()} at entry {report.first_bad_seq}: {report.problem}",
                  file=sys.stderr)
            return EXIT_ERROR
        if report.keyed_from is None:
            print(f"audit log intact but UNKEYED, accepted as asked (--accept-legacy): {report.entries} entries "
                  f"chained with plain SHA-256, which anyone who can write the database could recompute (a "
                  f"workspace's log is keyed from its next entry on)")
        else:
            plain = f"entries before {report.keyed_from} plain SHA-256, " if report.keyed_from > 1 else ""
            print(f"audit log intact: {report.entries} entries, chain verified ({plain}keyed with {report.key_path})")
        return 0
    if not args.workspace:
        raise ValueError(f"audit {args.action} needs --workspace W")
    ws = open_ws(args)
    if args.action == "export":
        if not args.out:
            raise ValueError("audit export needs --out FILE.jsonl")
        count = audit.export(ws.store, Path(args.out))
        print(f"{count} entries and the head written to {args.out}; check it with `audit verify --file {args.out}`")
        return 0
    show = audit.printable
    for row in ws.store.audit_entries().itertuples():
        print(f"{row.seq:>5}  {row.at:%Y-%m-%d %H:%M:%S}  {show(row.actor):<14} {show(row.action):<20} "
              f"{show(row.subject):<16} {audit.describe(row.detail)}")
    return 0


def register(add) -> None:
    p = add("audit", cmd_audit, "show the audit log, verify its keyed chain, or export it")
    p.add_argument("action", choices=["verify", "list", "export"])
    p.add_argument("--workspace")
    p.add_argument("--file", help="verify: an exported copy (FILE.jsonl) instead of a workspace")
    p.add_argument("--accept-legacy", action="store_true",
                   help="verify: accept a log from before audit keys (plain SHA-256); without it an unkeyed log "
                        "fails, and a log that was ever keyed fails unkeyed whatever this says")
    p.add_argument("--out", help="export: the FILE.jsonl to write")
