"""`python -m core`: every action the dashboard has, and more. Errors are one line and a non-zero exit."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXIT_ERROR = 1


def _ws(args):
    """The workspace, its database opened before any work: one this Evolab cannot use is refused in one line."""
    import duckdb

    from core.store import SchemaError
    from core.workspace import WorkspaceError, open_workspace

    ws = open_workspace(args.workspace)
    try:
        ws.store.migrate()
    except (duckdb.Error, SchemaError) as err:  # a corrupt file; a schema newer than this code
        raise WorkspaceError(f"workspace database {ws.db} cannot be used: {str(err).splitlines()[0]}") from None
    return ws


def _print_json(value) -> None:
    """Every --json output: strict JSON (jq and browsers refuse NaN), so NaN, NaT and infinity print as null."""
    import math

    import pandas as pd

    def strict(v):
        if hasattr(v, "tolist"):  # numpy arrays and scalars
            v = v.tolist()
        if isinstance(v, dict):
            return {str(k): strict(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [strict(x) for x in v]
        if isinstance(v, float) and math.isinf(v) or pd.api.types.is_scalar(v) and pd.isna(v):  # NaN, NaT, NA
            return None
        return v

    print(json.dumps(strict(value), indent=2, allow_nan=False,
                     default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v)))


def cmd_init(args) -> int:
    from core.actions import make_autonomous
    from core.config import Config
    from core.setup import init_workspace

    config = Config()
    if args.policy == "auto":
        make_autonomous(config)  # recorded: the initial config.toml and its audit entry say so
    if args.preset:
        from core.presets import init_preset

        if args.labeled or args.unlabeled or args.heldout:
            raise ValueError(f"--preset {args.preset} brings its own data: leave out --labeled/--unlabeled/--heldout")
        ws, notes = init_preset(Path(args.workspace), args.preset, config, args.base_model,
                                guardrails=Path(args.guardrails) if args.guardrails else None)
        for note in notes:
            print(note)
    elif not args.labeled:
        raise ValueError("init needs --labeled FILE.csv (or --preset NAME)")
    else:
        ws = init_workspace(Path(args.workspace), Path(args.labeled), Path(args.unlabeled) if args.unlabeled else None,
                            Path(args.heldout) if args.heldout else None, args.text_col, args.label_col,
                            args.base_model, config=config,
                            guardrails=Path(args.guardrails) if args.guardrails else None)
    counts = ws.store.datasets().set_index("split")["n_rows"].to_dict()
    print(f"workspace {ws.root}: {len(ws.store.labels())} labels, "
          + ", ".join(f"{n:,} {split}" for split, n in counts.items()))
    if args.policy == "auto":
        print("every gate is automatic: each decides by its own checks, recorded in the audit log")
    print(f"next: python -m core evolve --workspace {ws.root}")
    return 0


def _print_outcome(outcome) -> None:
    print(outcome.message, flush=True)


def cmd_evolve(args) -> int:
    import time

    from core import cycle

    ws = _ws(args)
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

    outcome = cycle.resume(_ws(args), args.auto_approve, progress=not args.quiet)
    print(outcome.message if outcome else "nothing to resume: no cycle is open")
    return 1 if outcome and outcome.status == "failed" else 0


def cmd_abandon(args) -> int:
    from core import actions

    ws = _ws(args)
    cycle = actions.abandon_cycle(ws, _principal(ws, args.by, f"cycle:{args.cycle}"), args.cycle, args.comment)
    print(f"cycle {args.cycle} abandoned at its {cycle['stage']} stage ({cycle['error']}); "
          f"production stays {ws.store.alias('production') or '-'}")
    return 0


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


def _estimate(est: dict) -> str:
    """An estimate with its interval and what it rests on: on traffic (the probe's rows, carried over from
    the gate rows) or on the gate rows alone."""
    rows = (f"on traffic, {est['n']} probe rows and {est['gate_rows']} gate rows" if est.get("basis") == "traffic"
            or "gate_rows" in est else f"{est['n']} gate rows")
    return f"{est['accuracy']:.4f} (95% CI {est['ci_low']:.4f}-{est['ci_high']:.4f}, {rows})"


def cmd_status(args) -> int:
    from core import traffic

    info = status_dict(_ws(args))
    if args.json:
        _print_json(info)
        return 0
    print(f"workspace   {info['workspace']}")
    prod = info["production"]
    est = info["versions"].get(prod) if prod else None
    print(f"production  {prod or '-'}" + (f"  (gate estimate {_estimate(est)})" if est else ""))
    print(f"scaffold    {info['production_scaffold']}")
    print(f"candidate   {info['candidate'] or '-'}")
    print(f"held-out    resembles traffic {traffic.describe(info['heldout_resemblance'])}")
    for c in info["cycles"]:
        est = c["candidate_gate_estimate"]
        print(f"cycle {c['id']:>3}  {c['kind']:<8} {c['status']:<8} stage={c['stage']:<8} "
              f"candidate={c['candidate'] or '-':<5} gate={_estimate(est) if est else '-'}"
              + (f"  error: {c['error']}" if c["error"] else ""))
    if info["pending_gates"]:
        print(f"pending gates: {', '.join(map(str, info['pending_gates']))} "
              f"(python -m core gates --workspace {info['workspace']})")
    return 0


def cmd_gates(args) -> int:
    ws = _ws(args)
    frame = ws.store.gates()
    rows = [{**{k: (None if v != v else v) for k, v in r.items()}, "checks": json.loads(r["checks"])}
            for r in frame.to_dict("records")]
    if args.json:
        _print_json(rows)
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
            print("    " + "; ".join(f"{name} {_estimate(traffic.get(name) or checks[name])}"
                                     for name in ("candidate", "production") if checks.get(name)))
            if checks.get("resemblance"):
                from core.traffic import describe

                print(f"    held-out rows resemble traffic {describe(checks['resemblance'])}")
        print(f"    {'; '.join(checks.get('reasons', []))}")
    return 0


def _password() -> str:
    """The deciding person's password: from EVOLAB_PASSWORD when set (scripts, CI; announced), else a prompt."""
    import getpass

    if "EVOLAB_PASSWORD" in os.environ:
        print("using the password in EVOLAB_PASSWORD", file=sys.stderr)
        return os.environ["EVOLAB_PASSWORD"]
    return getpass.getpass("password: ")


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


def _principal(ws, name: str | None, action: str):
    """Whoever --by names, with their password checked (None when --by is not given)."""
    from core import auth

    return auth.authenticate(ws.store, name, _password(), action) if name else None


def cmd_decide(args) -> int:
    from core import actions

    ws = _ws(args)
    approved = args.command == "approve"
    who = _principal(ws, args.by, f"gate:{args.gate_id}")
    decided = actions.decide_gate(ws, who, args.gate_id, approved, args.comment or "",
                                  override=getattr(args, "override", False))
    print(f"gate {decided['id']} {decided['status']} by {who.name}" + (" (OVERRIDE of failed checks)"
                                                                        if decided["override"] else "")
          + f"; continue with `python -m core resume --workspace {ws.root}`")
    return 0


def cmd_predict(args) -> int:
    from core import atomic, registry, scaffolds
    from core.setup import read_predict_input
    from core.workspace import require_accepted_config

    ws = _ws(args)
    require_accepted_config(ws, "cli")  # a hand-set LLM endpoint would get the key named by api_key_env
    config = ws.config()
    frame = read_predict_input(Path(args.input), args.text_col, config)
    loaded = registry.load_alias(ws, "production")
    scaffold_id, spec = scaffolds.load_production(ws)
    rows = scaffolds.run(spec, loaded, frame[args.text_col].tolist(), scaffolds.bank_for(ws, loaded),
                         scaffolds.llm_asker(config.scaffolds.llm))
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

    ws = _ws(args)
    store = ws.store
    if args.action == "add":
        if not args.file or not args.by:
            raise ValueError("scaffolds add needs --file SCAFFOLD.json and --by APPROVER")
        from core import actions

        raw = Path(args.file).read_text(encoding="utf-8")
        sid, new = actions.add_scaffold(ws, _principal(ws, args.by, "scaffold:add"), raw)
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
        _print_json(info)
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


def cmd_rollback(args) -> int:
    from core import actions

    ws = _ws(args)
    previous = actions.rollback(ws, _principal(ws, args.by, f"rollback:{args.to}"), args.to)
    print(f"production: {previous or '-'} -> {args.to}")
    return 0


def cmd_serve(args) -> int:
    import logging
    import signal

    import uvicorn

    from core.serve.app import Service, create_app
    from core.workspace import require_accepted_config

    from core.demo import exposure_warning

    warning = exposure_warning(args.host, "the server", "/feedback needs an API token (/predict only with "
                                                        "serve.predict_requires_token), but tokens and texts")
    if warning:
        print(warning, file=sys.stderr, flush=True)
    ws = _ws(args)
    require_accepted_config(ws, "cli")  # serve.predict_requires_token and the scaffold's LLM are governed
    cfg = ws.config().serve
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    service = Service(ws, cfg).start()
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then re-raises the signal to the handler that was
    # there before it; a no-op one here lets the logs flush below and the process exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    try:
        print(f"serving {service.predictor.serving.model_version} of {ws.root} on http://{args.host}:{args.port} "
              f"(API docs at /docs)", flush=True)
        uvicorn.run(create_app(service), host=args.host, port=args.port, log_level=args.log_level,
                    access_log=False)
    finally:
        service.close()
        print(f"server stopped; {service.logs.flushed_predictions:,} predictions and "
              f"{service.logs.flushed_feedback:,} corrections logged", flush=True)
    return 0


def cmd_daemon(args) -> int:
    from core import daemon

    ws = _ws(args)
    return daemon.run(ws, daemon.settings(ws.config().daemon, window=args.window, poll_s=args.poll,
                                          cycles_per_night=args.cycles_per_night, now=args.now))


def cmd_ui(args) -> int:
    from core.demo import serve_dashboard

    ws = _ws(args)
    return serve_dashboard(ws.root, args.port, args.host)


def cmd_diagnose(args) -> int:
    from core import cycle

    ws = _ws(args)
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
        _print_json({"cycle": cycle_id, "findings": rows, "activations": internals.get("activations_summary"),
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
            _print_json(rows)
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
    who = _principal(ws, args.by, f"label_request:{args.id}")
    done = actions.answer_label_request(ws, who, args.id, args.label, skip=args.skip)
    print(f"label request {done['id']} " + ("skipped" if args.skip else f"labeled {done['label']}")
          + f" by {who.name}" + ("" if args.skip else "; " + actions.LABEL_USE[done["purpose"]]))
    return 0


def cmd_samples(args) -> int:
    ws = _ws(args)
    store = ws.store
    if args.action == "label":
        return cmd_label(args, ws)
    filters = {"cycle_id": args.cycle, "status": args.status, "generator": args.generator, "label": args.label,
               "search": args.search}
    if args.action == "list":
        page = store.sample_query(**filters, limit=args.limit, offset=args.offset)
        if args.json:
            _print_json(page.to_dict("records"))
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
        n = actions.export_samples(ws, _principal(ws, args.by, "export:samples"), Path(args.out), filters)
        print(f"{n:,} samples -> {args.out} (audited)")
        return 0

    ids = [int(i) for i in args.ids.split(",")] if args.ids else \
        store.sample_query(**filters)["id"].astype(int).tolist() if args.all_matching else []
    if not ids:
        raise ValueError("choose samples with --ids 1,2,3 or --all-matching plus filters")
    if not args.by:
        raise ValueError(f"samples {args.action} needs --by NAME (an approver)")
    who = _principal(ws, args.by, f"samples:{args.action}")
    n = actions.review_samples(ws, who, ids, args.action, label=args.to_label, comment=args.comment or "")
    print(f"{n:,} samples {args.action}d by {who.name}")
    return 0


def cmd_guardrails(args) -> int:
    from core import actions

    ws = _ws(args)
    if args.action == "add":
        if not args.file or not args.by:
            raise ValueError("guardrails add needs --file PROBES.csv (text,expected_label[,note]) and --by APPROVER")
        added = actions.add_guardrails(ws, _principal(ws, args.by, "guardrails"), Path(args.file))
        print(f"{added:,} guardrail probes added (audited)")
    else:
        probes = ws.store.guardrails()
        print("no guardrail probes yet" if probes.empty else
              probes[["id", "text", "expected_label", "note"]].to_string(index=False))
    return 0


def cmd_drift(args) -> int:
    ws = _ws(args)
    cycle_id = args.cycle or next((int(c) for c in reversed(ws.store.cycles()["id"].tolist())
                                   if ws.store.drift_report(int(c))), None)
    found = ws.store.drift_report(cycle_id) if cycle_id else None
    if args.json:
        _print_json(found)  # null when there is none yet
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


def cmd_users(args) -> int:
    from core import actions

    ws = _ws(args)
    if args.action == "list":
        users = ws.store.users()
        print("no users yet" if users.empty else users.to_string(index=False))
        return 0
    if not args.name:
        raise ValueError(f"users {args.action} needs a NAME")
    who = _principal(ws, args.by, f"user:{args.name}")
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

    ws = _ws(args)
    if args.action == "list":
        tokens = ws.store.tokens()
        print("no tokens yet" if tokens.empty else
              tokens[["name", "prefix", "created_at", "created_by", "revoked_at", "revoked_by"]].to_string(index=False))
        return 0
    if not args.name or not args.by:
        raise ValueError(f"tokens {args.action} needs NAME and --by APPROVER")
    who = _principal(ws, args.by, f"token:{args.name}")
    if args.action == "add":
        token = actions.add_token(ws, who, args.name)
        print(token)
        print(f"token '{args.name}': shown once, only its public id and a keyed hash of its secret are kept; send it as "
              "`Authorization: Bearer TOKEN`", file=sys.stderr)
    else:
        actions.revoke_token(ws, who, args.name)
        print(f"token '{args.name}' revoked")
    return 0


def cmd_config(args) -> int:
    from core import actions

    ws = _ws(args)
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
        accepted = actions.accept_config(ws, _principal(ws, args.by, "config:accept"))
        for key, change in accepted.items():
            print(f"{key}: {json.dumps(change['from'])} -> {json.dumps(change['to'])} (accepted, audited)")
        return 0
    if not args.key or args.value is None or not args.by:
        raise ValueError("config set needs KEY VALUE and --by APPROVER")
    who = _principal(ws, args.by, f"config:{args.key}")
    old, new = actions.config_set(ws, who, args.key, args.value)
    print(f"{args.key}: {json.dumps(old)} -> {json.dumps(new)} (audited)")
    return 0


def cmd_audit(args) -> int:
    from core import audit

    if args.action == "verify":
        if bool(args.workspace) == bool(args.file):
            raise ValueError("audit verify needs --workspace W or --file FILE.jsonl (one of them)")
        report = (audit.verify_file(Path(args.file), args.accept_legacy) if args.file
                  else audit.verify(_ws(args).store, args.accept_legacy))
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
    ws = _ws(args)
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


def cmd_demo(args) -> int:
    from core.demo import run_demo

    return run_demo(Path(args.workspace) if args.workspace else None, cycles=args.cycles, port=args.port, preset=args.preset)


def _count(text: str) -> int:
    """An argparse type: a whole number, zero or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


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

    p = add("init", cmd_init, "create a workspace from labeled (and unlabeled) CSV files")
    p.add_argument("--workspace", required=True)
    p.add_argument("--labeled", help="labeled CSV (required unless --preset)")
    p.add_argument("--preset", help="a skill with its own data and settings: sql-migrations")
    p.add_argument("--unlabeled")
    p.add_argument("--heldout")
    p.add_argument("--text-col", default="text")
    p.add_argument("--label-col", default="label")
    p.add_argument("--base-model", help="Hugging Face id or local path (default: the bundled MiniLM)")
    p.add_argument("--guardrails", help="must-hold probes: CSV with text,expected_label[,note]")
    p.add_argument("--policy", choices=["default", "auto"], default="default",
                   help="auto: every gate decides by its own checks, no person waited for (recorded)")

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

    for name, fn, help_ in (("status", cmd_status, "production model, cycles and pending gates"),
                            ("gates", cmd_gates, "list gates with their checks")):
        p = add(name, fn, help_)
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

    p = add("abandon", cmd_abandon, "close a stuck open cycle (an approver); nothing it made ships")
    p.add_argument("--workspace", required=True)
    p.add_argument("--cycle", type=int, required=True)
    p.add_argument("--by", required=True, help="an approver's name (password from a prompt or EVOLAB_PASSWORD)")
    p.add_argument("--comment", default="", help="why (kept in the audit log)")

    p = add("rollback", cmd_rollback, "point production at an earlier version")
    p.add_argument("--workspace", required=True)
    p.add_argument("--to", required=True)
    p.add_argument("--by", required=True, help="an approver's name (password from a prompt or EVOLAB_PASSWORD)")

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

    p = add("config", cmd_config, "read config.toml, set one key as an approver (audited), or accept hand "
                                  "edits of keys that govern oversight, execution or secrets")
    p.add_argument("action", choices=["get", "set", "accept"])
    p.add_argument("key", nargs="?")
    p.add_argument("value", nargs="?")
    p.add_argument("--workspace", required=True)
    p.add_argument("--by", help="set, accept: an approver's name")

    p = add("audit", cmd_audit, "show the audit log, verify its keyed chain, or export it")
    p.add_argument("action", choices=["verify", "list", "export"])
    p.add_argument("--workspace")
    p.add_argument("--file", help="verify: an exported copy (FILE.jsonl) instead of a workspace")
    p.add_argument("--accept-legacy", action="store_true",
                   help="verify: accept a log from before audit keys (plain SHA-256); without it an unkeyed log "
                        "fails, and a log that was ever keyed fails unkeyed whatever this says")
    p.add_argument("--out", help="export: the FILE.jsonl to write")

    p = add("serve", cmd_serve, "serve the production model over HTTP (predict, feedback, metrics)")
    p.add_argument("--workspace", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])

    p = add("daemon", cmd_daemon, "run cycles unattended, only inside the nightly training window")
    p.add_argument("--workspace", required=True)
    p.add_argument("--window", help="HH:MM-HH:MM local time (default: daemon.window in config.toml)")
    p.add_argument("--poll", type=float, help="seconds between checks (default: daemon.poll_s)")
    p.add_argument("--cycles-per-night", type=int)
    p.add_argument("--now", help="pretend the local time is this (HH:MM or an ISO timestamp); for tests and "
                                 "dry runs (also EVOLAB_DAEMON_NOW)")

    p = add("ui", cmd_ui, "serve the dashboard for a workspace")
    p.add_argument("--workspace", required=True)
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--host", default="127.0.0.1")

    p = add("demo", cmd_demo, "create a workspace on the bundled demo data and run a cycle")
    p.add_argument("--workspace", help="default demo-workspace (demo-sql-migrations with --preset sql-migrations)")
    p.add_argument("--cycles", type=int, default=1)
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--preset", help="demo a preset skill instead of ticket routing: sql-migrations")
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
    from core.model import ModelIntegrityError
    from core.registry import NoModelError
    from core.store import StoreBusy, StoreConflict
    from core.workspace import WorkspaceError

    from core.auth import AuthError
    from core.auditkey import AuditKeyError

    known = (AuditKeyError, AuthError, ConfigError, DataError, ModelIntegrityError, NoModelError, StoreBusy,
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
