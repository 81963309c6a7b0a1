"""`predict` and `scaffolds`: label a CSV with the production model and scaffold; list, search, A/B test and
add scaffolds."""
from __future__ import annotations

from pathlib import Path

from core.cli.common import open_ws, principal, print_json


def cmd_predict(args) -> int:
    from core import atomic, executor, registry, scaffolds
    from core.scaffolds import run as scaffold_run
    from core.setup import read_predict_input
    from core.workspace import require_accepted_config

    ws = open_ws(args)
    require_accepted_config(ws, "cli")  # a hand-set LLM endpoint would get the key named by api_key_env
    config = ws.config()
    executor.check(config.engine)  # an unreachable Ray cluster: one line before the file is read
    frame = read_predict_input(Path(args.input), args.text_col, config)
    loaded = registry.load_alias(ws, "production")
    scaffold_id, spec = scaffolds.load_production(ws)
    # The encoder passes (the file's texts and any perturbed views) run on engine.executor; the scaffold's steps here.
    with executor.open_executor(config.engine) as ex:
        rows = scaffold_run.run(spec, loaded, frame[args.text_col].tolist(), scaffold_run.bank_for(ws, loaded),
                                scaffold_run.llm_asker(config.scaffolds.llm),
                                encode=executor.model_encoder(ex, ws, loaded))
    frame["prediction"] = [r["label"] for r in rows]
    frame["confidence"] = [r["confidence"] for r in rows]
    frame["abstained"] = [r["abstained"] for r in rows]  # routed to a person; prediction is the best guess
    out = Path(args.output)
    atomic.write_with(out, lambda tmp: frame.to_csv(tmp, index=False))
    named = f" ({spec['name']})" if spec["name"] != scaffold_id else ""
    print(f"{len(frame):,} predictions from {loaded.version} with scaffold {scaffold_id}{named}; "
          f"{int(frame['abstained'].sum()):,} routed to a person -> {out}")
    return 0


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def cmd_scaffolds(args) -> int:
    from core import cycle
    from core.scaffolds import archive, report

    ws = open_ws(args)
    store = ws.store
    if args.action == "add":
        if not args.file or not args.by:
            raise ValueError("scaffolds add needs --file SCAFFOLD.json and --by APPROVER")
        from core import actions

        raw = Path(args.file).read_text(encoding="utf-8")
        sid, new = actions.add_scaffold(ws, principal(ws, args.by, "scaffold:add"), raw)
        print(f"scaffold {sid} {'added' if new else 'already exists (same steps)'}; "
              f"A/B test it with `python -m core scaffolds trial --workspace {ws.root} --candidate {sid}`")
        return 0
    if args.action in ("search", "trial"):
        if args.action == "trial" and not args.candidate:
            raise ValueError("scaffolds trial needs --candidate SCAFFOLD_ID")
        outcome = cycle.run_scaffold_cycle(ws, budget=args.budget,
                                           candidate=args.candidate if args.action == "trial" else None,
                                           auto_approve=args.auto_approve, progress=not args.quiet)
        print(outcome.message)
        trial = store.scaffold_trial(outcome.cycle_id)
        if trial and trial["result"]:
            print("; ".join(trial["result"]["checks"]["reasons"]))
        return 0
    archive.ensure_builtins(store, "cli")
    info = report.overview(store)
    if args.json:
        print_json(info)
        return 0
    prod = info["production"]
    print(f"production scaffold {prod['id']} ({prod['name']}): {prod['steps']}")
    print(f"archive (search accuracy on production model {info['model_version'] or '-'}):")
    for r in info["archive"]:
        lineage = f"<- {r['parent']} {r['operator']}" if r["parent"] else "built-in" if not r["cycle"] else ""
        print(f"  {'*' if r['production'] else ' '}{r['id']:<5} acc={_pct(r['accuracy']):>6} "
              f"cov={_pct(r['coverage']):>6} guard={_pct(r['guardrail_pass']):>6}  {r['steps']}  {lineage}")
    for t in info["trials"]:
        line = (f"trial cycle {t['cycle']}: {t['candidate'] or '-'} vs {t['production']} {t['status']}/{t['stage']}")
        if t["gain"] is not None:
            line += (f"  {_pct(t['production_accuracy'])} -> {_pct(t['candidate_accuracy'])}, gain "
                     f"{t['gain']:+.4f} CI [{t['ci_low']:+.4f}, {t['ci_high']:+.4f}] p={t['p_value']:.4f}")
        if t["gate"] is not None:
            line += f"  gate {t['gate']} {t['gate_status']}"
        print(line)
    return 0


def register(add) -> None:
    p = add("predict", cmd_predict, "label a CSV with the production model")
    p.add_argument("--workspace", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--text-col", default="text")

    p = add("scaffolds", cmd_scaffolds, "inference scaffolds: list the archive, search, A/B trial, add")
    p.add_argument("action", nargs="?", default="list", choices=["list", "search", "trial", "add"])
    p.add_argument("--workspace", required=True)
    p.add_argument("--json", action="store_true")
    p.add_argument("--budget", type=int, help="search: new scaffolds to evaluate (default scaffolds.budget)")
    p.add_argument("--candidate", help="trial: the scaffold id to A/B test against production")
    p.add_argument("--file", help="add: a scaffold JSON file")
    p.add_argument("--by", help="add: an approver's name")
    p.add_argument("--auto-approve", action="store_true",
                   help="decide the scaffold_adoption gate automatically by its checks (audited)")
    p.add_argument("--quiet", action="store_true")
