"""SQL-migration skill benchmark: the `sql-migrations` preset evolving in the recorded autonomous mode.

A workspace made exactly as `python -m core init --preset sql-migrations --policy auto` makes it (the shipped
seed of 70 hand-written migrations, the grammar's unlabeled traffic, the execution verifier on a throwaway
PostgreSQL cluster), then `--cycles` evolution cycles. Per cycle it prints the production model's accuracy on
the 67 hand-written held-out migrations (data/sql_migrations_heldout.csv: never trained on; a quarter of them,
the selection part, steers checkpoint choice and diagnosis as in every workspace, and the gate's estimate on the
other 51 is printed beside), generated / executed / kept samples, sandbox checks per second, the top drop
reasons and the wall time. At the end, on the held-out migrations: Evolab's routing next to what `squawk` (the
PostgreSQL migration linter, `pip install -r bench/requirements-sql.txt`) flags.

    python bench/sql_migrations.py --cycles 3
    python bench/sql_migrations.py --cycles 3 --set curate.sql_migrations_per_class=60 --json-out bench/out/sql.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.banking77 import BenchError, DevScorer, build_config, cycle_record, rss_mb, _pct, _sec  # noqa: E402

HELDOUT = REPO / "data" / "sql_migrations_heldout.csv"
TARGET_LIFT, TARGET_MINUTES = 0.15, 30
# squawk rules that fire on nearly every migration whatever it does (session settings, style): counted apart, so
# "squawk flags it" means a rule about what the statement does to the table or its data.
SQUAWK_UBIQUITOUS = {"require-lock-timeout", "require-statement-timeout", "prefer-robust-stmts",
                     "prefer-bigint-over-int", "prefer-bigint-over-smallint", "prefer-identity",
                     "prefer-text-field", "prefer-timestamptz", "transaction-nesting"}


def sandbox_detail(ws, cycle_id: int) -> dict | None:
    """The curate stage's execution report (core.curate.yield_report's `sandbox`)."""
    runs = ws.store.stage_runs(cycle_id)
    curate = runs[runs["stage"] == "curate"]
    if curate.empty:
        return None
    detail = curate["detail"].iloc[-1]
    detail = json.loads(detail) if isinstance(detail, str) else detail
    return (detail or {}).get("sandbox")


def squawk_flags(texts: list[str]) -> list[list[str]] | None:
    """The rules squawk reports per migration (None: squawk is not installed)."""
    exe = shutil.which("squawk")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory(prefix="evolab-squawk-") as tmp:
        paths = []
        for i, text in enumerate(texts):
            path = Path(tmp) / f"m{i:03d}.sql"
            path.write_text(text if text.rstrip().endswith(";") else text + ";\n")
            paths.append(str(path))
        done = subprocess.run([exe, "--reporter", "json", *paths], capture_output=True, text=True, timeout=300)
        try:
            found = json.loads(done.stdout or "[]")
        except ValueError:
            raise BenchError(f"squawk answered something that is not JSON: {done.stdout[:200]} {done.stderr[:200]}")
        rules: dict[str, list[str]] = {p: [] for p in paths}
        for item in found:
            rules.setdefault(item["file"], []).append(item["rule_name"])
        return [sorted(set(rules[p])) for p in paths]


def side_by_side(truth: list[str], evolab: list[str], squawk: list[list[str]] | None) -> dict:
    """Risky means any label but safe. Evolab routes a migration to one of five outcomes; squawk either flags it
    (a rule about what it does, the ubiquitous rules set apart) or not."""
    risky = [t != "safe" for t in truth]
    out = {"n": len(truth), "risky": sum(risky),
           "evolab": {"accuracy_5way": sum(e == t for e, t in zip(evolab, truth)) / len(truth),
                      "risky_accuracy": sum((e != "safe") == r for e, r in zip(evolab, risky)) / len(truth),
                      "risky_caught": sum(e != "safe" and r for e, r in zip(evolab, risky)),
                      "safe_flagged": sum(e != "safe" and not r for e, r in zip(evolab, risky)),
                      "per_label_recall": {lab: round(sum(e == t for e, t in zip(evolab, truth) if t == lab)
                                                      / truth.count(lab), 3) for lab in sorted(set(truth))}}}
    if squawk is not None:
        specific = [[r for r in rules if r not in SQUAWK_UBIQUITOUS] for rules in squawk]
        flagged = [bool(r) for r in specific]
        out["squawk"] = {
            "any_rule": sum(bool(r) for r in squawk),
            "risky_accuracy": sum(f == r for f, r in zip(flagged, risky)) / len(truth),
            "risky_caught": sum(f and r for f, r in zip(flagged, risky)),
            "safe_flagged": sum(f and not r for f, r in zip(flagged, risky)),
            "flagged_per_label": {lab: f"{sum(f for f, t in zip(flagged, truth) if t == lab)}/{truth.count(lab)}"
                                  for lab in sorted(set(truth))},
            "rules": dict(Counter(r for rules in specific for r in rules).most_common(12))}
    return out


def print_side_by_side(report: dict) -> None:
    e = report["evolab"]
    print(f"\nheld-out migrations, side by side ({report['n']}: {report['risky']} risky, "
          f"{report['n'] - report['risky']} safe):")
    print(f"  evolab   5-way accuracy {_pct(e['accuracy_5way'])}; risky-or-not accuracy {_pct(e['risky_accuracy'])}; "
          f"risky caught {e['risky_caught']}/{report['risky']}; safe ones flagged {e['safe_flagged']}/"
          f"{report['n'] - report['risky']}")
    print(f"           recall per label: {', '.join(f'{k} {v:.0%}' for k, v in e['per_label_recall'].items())}")
    s = report.get("squawk")
    if s is None:
        print("  squawk   not installed (pip install -r bench/requirements-sql.txt)")
        return
    print(f"  squawk   flags (rules about the change itself) {s['risky_caught'] + s['safe_flagged']}"
          f"; risky-or-not accuracy {_pct(s['risky_accuracy'])}; risky caught {s['risky_caught']}/{report['risky']}; "
          f"safe ones flagged {s['safe_flagged']}/{report['n'] - report['risky']}; any rule at all: {s['any_rule']}")
    print(f"           flagged per true label: {', '.join(f'{k} {v}' for k, v in s['flagged_per_label'].items())}")
    print(f"           its rules: {', '.join(f'{k} x{v}' for k, v in s['rules'].items())}")
    print("           (squawk says whether a migration is risky by rule, not which outcome: no 5-way figure)")


def line(r: dict, base: float | None) -> str:
    sb = r.get("sandbox") or {}
    gen = sum(v["generated"] for v in r["samples"].values()) if r["samples"] else 0
    kept = sum(v["kept"] for v in r["samples"].values()) if r["samples"] else 0
    lift = "-" if base is None or r["dev_acc"] is None else f"{100 * (r['dev_acc'] - base):+.1f}pp"
    est = r["gate_estimate"]
    drops = sorted((sb.get("dropped_by") or {}).items(), key=lambda kv: -kv[1])[:2]
    return (f"{r['cycle']:>3}  {r['kind']:<8}  {r['status']:<8}  {r['production'] or '-':<5}  "
            f"{_pct(r['dev_acc']):>8}  {lift:>8}  {_pct(r['candidate_dev_acc']):>8}  {_pct(est and est['accuracy']):>8}  "
            f"{gen:>6,}  {sb.get('executed', 0):>6,}  {kept:>6,}  {sb.get('checks_per_s') or '-':>7}  "
            f"{_sec(r['cycle_s']):>7}  " + "; ".join(f"{n} {why}" for why, n in drops))


HEADER = (f"{'cyc':>3}  {'kind':<8}  {'status':<8}  {'prod':<5}  {'held_acc':>8}  {'vs base':>8}  {'cand_acc':>8}  "
          f"{'gate_est':>8}  {'gen':>6}  {'exec':>6}  {'kept':>6}  {'chk/s':>7}  {'wall_s':>7}  top drop reasons")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/sql_migrations.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, default=3, help="evolution cycles after the baseline (default 3)")
    p.add_argument("--work", type=Path, help="work folder (default: a temp folder, deleted unless --keep)")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value on top of the preset's (repeatable)")
    p.add_argument("--json-out", type=Path)
    p.add_argument("--quiet", action="store_true", help="no engine progress on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    import pandas as pd

    from core.actions import parse_value
    from core.config import ConfigError, parse_config
    from core.presets import init_preset, sandbox_backend

    try:
        if args.cycles < 1:
            raise BenchError("--cycles must be 1 or more")
        backend, why = sandbox_backend()
        build_config(args.overrides)  # refuse a bad --set before anything runs

        def adjust(config):
            """The preset's settings, then the bench's --set on top, validated like config.toml."""
            raw = config.model_dump()
            for item in args.overrides:
                key, _, value = item.partition("=")
                section, _, name = key.partition(".")
                raw.setdefault(section, {})[name] = parse_value(value.strip())
            return parse_config(raw)
    except (BenchError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if why:
        print(f"note: {why}", flush=True)

    own_tmp = args.work is None
    work = Path(tempfile.mkdtemp(prefix="evolab-sql-")) if own_tmp else args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    heldout = pd.read_csv(HELDOUT)
    rows: list[dict] = []
    meta: dict = {"overrides": args.overrides, "backend": backend, "cpus": os.cpu_count(),
                  "omp_threads": os.environ.get("OMP_NUM_THREADS")}
    code = 0
    try:
        from core import cycle

        t0 = time.perf_counter()
        # Exactly `init --preset sql-migrations --policy auto` (build_config makes every gate automatic).
        ws, notes = init_preset(work / "workspace", "sql-migrations", build_config([]), adjust=adjust)
        meta["setup_s"] = time.perf_counter() - t0
        print("\n".join(notes), flush=True)
        print(f"workspace {ws.root}; held-out {len(heldout)} migrations; setup {meta['setup_s']:.1f}s", flush=True)
        scorer = DevScorer(ws, heldout)
        print(HEADER, flush=True)
        for _ in range(args.cycles):
            marks: list = []
            t_call = time.perf_counter()
            cycle.evolve(ws, cycles=1, progress=not args.quiet,
                         on_outcome=lambda o: marks.append((o, time.perf_counter(), ws.store.alias("production"))))
            previous = t_call
            for outcome, at, production in marks:
                record = cycle_record(ws, len(rows), outcome, at - previous, production, scorer)
                record["sandbox"] = sandbox_detail(ws, outcome.cycle_id)
                previous = at
                rows.append(record)
                print(line(record, rows[0]["dev_acc"]), flush=True)
                for g in record["gates"]:
                    if g["status"] == "rejected":
                        print(f"      {g['kind']} gate rejected by {g['by']}: {g['comment']}", flush=True)
            if marks and marks[-1][0].status in ("waiting", "failed"):
                meta["error"] = marks[-1][0].message
                code = 1
                break
        # Side by side on the held-out migrations: the final production model against squawk's rules.
        from core import model as M, registry
        import numpy as np

        production = ws.store.alias("production")
        loaded = registry.load(ws, production)
        predicted = list(np.asarray(loaded.labels, dtype=object)[M.predict_proba(loaded, heldout["text"].tolist()).argmax(1)])
        meta["side_by_side"] = side_by_side(list(heldout["label"]), predicted, squawk_flags(list(heldout["text"])))
    except KeyboardInterrupt:
        meta["error"], code = "interrupted", 130
    except Exception as err:
        traceback.print_exc()
        meta["error"], code = f"{type(err).__name__}: {err}", 1
    finally:
        meta["total_s"] = time.perf_counter() - t_start
        meta["peak_rss_mb"] = dict(zip(("self", "children"), (round(x) for x in rss_mb())))
        if rows:
            base, final = rows[0]["dev_acc"], rows[-1]["dev_acc"]
            executed = sum((r.get("sandbox") or {}).get("executed", 0) for r in rows)
            seconds = sum((r.get("sandbox") or {}).get("seconds", 0) for r in rows)
            meta["summary"] = {"baseline": base, "final": final, "lift": None if None in (base, final) else final - base,
                               "executed": executed, "checks_per_s": round(executed / seconds, 1) if seconds else None}
            print("\n== summary " + "=" * 70)
            print(f"held-out accuracy: seed-only baseline {_pct(base)} -> {_pct(final)} after {len(rows) - 1} "
                  f"cycle(s): {100 * (final - base):+.1f} points (target +{100 * TARGET_LIFT:.0f})")
            print(f"sandbox: {executed:,} executions in {seconds:.1f}s ({meta['summary']['checks_per_s']} checks/s, "
                  f"{backend}); machine {os.cpu_count()} CPUs, OMP_NUM_THREADS={meta['omp_threads']}")
            print(f"wall time {meta['total_s'] / 60:.1f} min (target {TARGET_MINUTES} min); peak RSS "
                  f"{meta['peak_rss_mb']['self']} MB, children {meta['peak_rss_mb']['children']} MB")
        if meta.get("side_by_side"):
            print_side_by_side(meta["side_by_side"])
        if meta.get("error"):
            print(f"error: {meta['error']}")
        if args.json_out:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(json.dumps({**meta, "cycles": rows}, indent=2, default=str) + "\n")
        if own_tmp and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
