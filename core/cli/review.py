"""`diagnose`, `samples`, `guardrails` and `drift`: what a cycle found and made, for people to read, review and
label."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.cli.common import open_ws, principal, print_json


def cmd_diagnose(args) -> int:
    from core import cycle

    ws = open_ws(args)
    store = ws.store
    cycle_id, findings = store.latest_diagnosis()
    if args.run or cycle_id is None:
        version = store.alias("production")
        if not version:
            raise ValueError("nothing to diagnose yet: no production model (run `python -m core evolve`)")
        cycle.run_diagnosis(ws, 0, version, None, progress=not args.json)
        cycle_id, findings = 0, store.diagnoses(0)
    internals = store.diagnosis_internals(cycle_id)
    if args.json:
        rows = [{**r, "detail": json.loads(r["detail"])} for r in findings.to_dict("records")]
        print_json({"cycle": cycle_id, "findings": rows, "activations": internals.get("activations_summary"),
                    "heads": {k: v for k, v in internals.get("heads", {}).items() if k != "importance"},
                    "lora_choice": internals.get("lora_choice")})
        return 0
    print(f"diagnosis {'on demand' if cycle_id == 0 else f'of cycle {cycle_id}'}: {len(findings)} findings")
    for r in findings.head(15).itertuples():
        trend = json.loads(r.detail).get("trend", "")
        print(f"{r.rank:>3}. [{r.kind:<14}] {r.subject:<50} errors={r.severity:>4.0f} {trend:<10} -> {r.action}")
    if internals.get("activations_summary"):
        print(f"activations: {internals['activations_summary']}")
    if internals.get("heads"):
        print(f"heads: {internals['heads']['reason']}")
    if internals.get("lora_choice"):
        print(f"next training: LoRA on {internals['lora_choice']['reason']}")
    return 0


def cmd_label(args, ws) -> int:
    """`samples label`: the labeling queue (the human budget), or one answer with --id."""
    from core import actions

    store = ws.store
    if args.id is None:
        if args.skip or args.by:
            raise ValueError("samples label: choose the request with --id N")
        queue = store.label_requests(status="pending", cycle_id=args.cycle)
        rows = [{**r, "suggestions": json.loads(r["suggestions"] or "[]")} for r in queue.to_dict("records")]
        if args.json:
            print_json(rows)
        elif not rows:
            print("no texts wait for a label (curate.ask_humans_per_cycle asks for some each cycle)")
        else:
            print(f"{len(rows)} texts wait for a label; answer one with `python -m core samples label --workspace "
                  f"{ws.root} --id N --label L --by NAME` (or --skip)")
            for r in rows:
                hints = ", ".join(f"{h['label']} {h['p']:.2f}" for h in r["suggestions"])
                why = "grades" if r["purpose"] == "evaluate" else f"score {r['score']:.3f}"
                print(f"{r['id']:>5}  cycle {r['cycle_id']:<3} {why:<11}  {r['text'][:90]!r}  [{hints}]")
        return 0
    if not args.by:
        raise ValueError("samples label --id N needs --by NAME (a labeler or an approver)")
    if args.skip == bool(args.label):
        raise ValueError("samples label --id N needs --label L or --skip (one of them)")
    if args.label and args.label not in store.labels():  # refused before asking for a password
        raise ValueError(f"unknown label '{args.label}'; `python -m core samples label --workspace {ws.root}` "
                         "shows each request's suggestions")
    who = principal(ws, args.by, f"label_request:{args.id}")
    done = actions.answer_label_request(ws, who, args.id, args.label, skip=args.skip)
    print(f"label request {done['id']} " + ("skipped" if args.skip else f"labeled {done['label']}")
          + f" by {who.name}" + ("" if args.skip else "; " + actions.LABEL_USE[done["purpose"]]))
    return 0


def cmd_samples(args) -> int:
    ws = open_ws(args)
    store = ws.store
    if args.action == "label":
        return cmd_label(args, ws)
    filters = {"cycle_id": args.cycle, "status": args.status, "generator": args.generator, "label": args.label,
               "search": args.search}
    if args.action == "list":
        page = store.sample_query(**filters, limit=args.limit, offset=args.offset)
        if args.json:
            print_json(page.to_dict("records"))
        elif page.empty:
            print("no samples match")
        else:
            cols = ["id", "cycle_id", "generator", "status", "label", "difficulty", "confidence", "text", "reason"]
            with __import__("pandas").option_context("display.max_colwidth", 60, "display.width", 200):
                print(page[cols].to_string(index=False))
        return 0
    from core import actions

    if args.action == "export":
        if not args.out or not args.by:
            raise ValueError("samples export needs --out FILE.parquet or FILE.jsonl and --by APPROVER")
        n = actions.export_samples(ws, principal(ws, args.by, "export:samples"), Path(args.out), filters)
        print(f"{n:,} samples -> {args.out} (audited)")
        return 0

    ids = [int(i) for i in args.ids.split(",")] if args.ids else \
        store.sample_query(**filters)["id"].astype(int).tolist() if args.all_matching else []
    if not ids:
        raise ValueError("choose samples with --ids 1,2,3 or --all-matching plus filters")
    if not args.by:
        raise ValueError(f"samples {args.action} needs --by NAME (an approver)")
    who = principal(ws, args.by, f"samples:{args.action}")
    n = actions.review_samples(ws, who, ids, args.action, label=args.to_label, comment=args.comment or "")
    print(f"{n:,} samples {args.action}d by {who.name}")
    return 0


def cmd_guardrails(args) -> int:
    from core import actions

    ws = open_ws(args)
    if args.action == "add":
        if not args.file or not args.by:
            raise ValueError("guardrails add needs --file PROBES.csv (text,expected_label[,note]) and --by APPROVER")
        added = actions.add_guardrails(ws, principal(ws, args.by, "guardrails"), Path(args.file))
        print(f"{added:,} guardrail probes added (audited)")
    else:
        probes = ws.store.guardrails()
        print("no guardrail probes yet" if probes.empty else
              probes[["id", "text", "expected_label", "note"]].to_string(index=False))
    return 0


def cmd_drift(args) -> int:
    ws = open_ws(args)
    cycle_id = args.cycle or next((int(c) for c in reversed(ws.store.cycles()["id"].tolist())
                                   if ws.store.drift_report(int(c))), None)
    found = ws.store.drift_report(cycle_id) if cycle_id else None
    if args.json:
        print_json(found)  # null when there is none yet
        return 0
    if not found:
        print("no drift report yet (one is made for every candidate once production exists)")
        return 0
    report = found["report"]
    held = report["heldout"]
    print(f"cycle {cycle_id}: {found['candidate']} vs {found['production']}: verdict {report['verdict'].upper()}")
    for reason in report["reasons"]:
        print(f"  - {reason}")
    print(f"  held-out flip rate {held['flip_rate']:.3f} ({held['flips_fixed']} fixed, {held['flips_broken']} broken), "
          f"KL {held['kl']:.4f}, ECE {held['ece_production']:.3f} -> {held['ece_candidate']:.3f}")
    if "guardrails" in report:
        g = report["guardrails"]
        print(f"  guardrails {g['pass_rate_production']:.0%} -> {g['pass_rate_candidate']:.0%}")
        for f in g["failures"][:10]:
            print(f"    FAIL {f['text']!r}: expected {f['expected']}, got {f['candidate']}  {f['note']}")
    for f in held["flipped"][:10]:
        print(f"  flip  {f['text'][:70]!r}: {f['production']} -> {f['candidate']} (true {f['label']})")
    return 0


def _count(text: str) -> int:
    """An argparse type: a whole number, zero or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def register(add) -> None:
    p = add("diagnose", cmd_diagnose, "show the latest diagnosis, or run one on production")
    p.add_argument("--workspace", required=True)
    p.add_argument("--run", action="store_true", help="diagnose the production model now")
    p.add_argument("--json", action="store_true")

    p = add("samples", cmd_samples, "list, review (approve, reject, relabel) or export curated samples; label: "
                                    "the texts curation asks people to label")
    p.add_argument("action", choices=["list", "approve", "reject", "relabel", "export", "label"])
    p.add_argument("--workspace", required=True)
    p.add_argument("--cycle", type=int)
    p.add_argument("--status")
    p.add_argument("--generator")
    p.add_argument("--label", help="a filter; label: the answer to request --id")
    p.add_argument("--id", type=int, help="label: the label request to answer")
    p.add_argument("--skip", action="store_true", help="label: pass on request --id (it is not asked again)")
    p.add_argument("--search")
    p.add_argument("--limit", type=_count, default=50)
    p.add_argument("--offset", type=_count, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--ids", help="comma-separated sample ids")
    p.add_argument("--all-matching", action="store_true", help="every sample the filters match")
    p.add_argument("--to-label", help="relabel: the new label")
    p.add_argument("--by")
    p.add_argument("--comment")
    p.add_argument("--out", help="export: .parquet or .jsonl")

    p = add("guardrails", cmd_guardrails, "add or list must-hold guardrail probes")
    p.add_argument("action", choices=["add", "list"])
    p.add_argument("--workspace", required=True)
    p.add_argument("--file")
    p.add_argument("--by", help="add: an approver's name (guardrails feed the drift gate)")

    p = add("drift", cmd_drift, "show a candidate's drift report")
    p.add_argument("--workspace", required=True)
    p.add_argument("--cycle", type=int)
    p.add_argument("--json", action="store_true")
