"""Sandbox throughput: generated migrations executed in a throwaway PostgreSQL cluster, checks per second.

Writes N migrations with the sql_migrations grammar (every label, levels 0-3 evenly), starts a cluster in a
temp folder, runs them with `check_many`, and prints checks/second, the wall time, how often execution agreed
with the grammar's intended label, and the outcome counts; then the same for a sample with a fresh clone per
check (`--clone-sample`) and for the DuckDB fallback (`--duckdb-sample`). The cluster is stopped and its folder
removed at the end.

    python bench/sandbox.py                      # 1000 migrations, 2 workers
    python bench/sandbox.py --n 5000 --workers 4 --json-out bench/out/sandbox.json
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from core.curate import sql_migrations as G  # noqa: E402
from core.sandbox import LABELS  # noqa: E402


def migrations(n: int, seed: int) -> list[tuple[str, int, str]]:
    rng = random.Random(seed)
    return [(label, level, G.generate(label, level, rng)[0])
            for i in range(n) for label, level in [(LABELS[i % 5], (i // 5) % 4)]]


def run(sandbox, items) -> dict:
    start = time.perf_counter()
    outcomes = sandbox.check_many([sql for *_, sql in items])
    wall = time.perf_counter() - start
    return {"checks": len(items), "wall_s": round(wall, 2), "checks_per_s": round(len(items) / wall, 1),
            "agree": round(sum(o.label == label for (label, _, _), o in zip(items, outcomes)) / len(items), 4),
            "outcomes": dict(Counter(str(o.label) for o in outcomes)),
            "contained": sum(o.escape for o in outcomes)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clone-sample", type=int, default=100, help="checks with a fresh clone each (0: skip)")
    ap.add_argument("--duckdb-sample", type=int, default=100, help="checks on the DuckDB fallback (0: skip)")
    ap.add_argument("--json-out")
    args = ap.parse_args()

    from core.sandbox.postgres import PostgresSandbox

    items = migrations(args.n, args.seed)
    report: dict = {"n": args.n, "workers": args.workers}
    start = time.perf_counter()
    sandbox = PostgresSandbox.local(workers=args.workers)
    report["startup_s"] = round(time.perf_counter() - start, 2)
    try:
        report["postgres"] = run(sandbox, items)
        print(f"postgres, reused clones rolled back: {report['postgres']}", flush=True)
        if args.clone_sample:
            sandbox.mode = "clone"
            report["postgres_fresh_clone"] = run(sandbox, items[:args.clone_sample])
            print(f"postgres, fresh clone per check:     {report['postgres_fresh_clone']}", flush=True)
    finally:
        sandbox.close()
    if args.duckdb_sample:
        from core.sandbox.duckdb_fallback import DuckDBSandbox

        with DuckDBSandbox(workers=args.workers) as duck:
            report["duckdb"] = run(duck, items[:args.duckdb_sample])
        print(f"duckdb fallback:                     {report['duckdb']}", flush=True)
    print(f"cluster start + template: {report['startup_s']} s; "
          f"{report['postgres']['checks_per_s']} checks/s with {args.workers} workers")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
