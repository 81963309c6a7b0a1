"""Scale-out: encoding and sandbox throughput in this process against Ray with 1 and 2 workers, and projections.

Encodes N traffic texts (the demo tickets, repeated with a counter so none is a cache hit) with the bundled
MiniLM, the teacher view's and the pool's encoder pass, through core.executor: `local` (this process, torch on
every core) and `ray` with 1 and 2 actors (one torch thread each), on a Ray started here on 127.0.0.1; and
executes N SQL-skill migrations through the execution check, one PostgreSQL cluster here against one per actor.
Then it
measures the two things every worker's result must pass through, whatever the cluster's size: the driver
collecting results (bytes a second of embedding batches returned by actors) and the single writer appending rows
to a DuckDB file. From the measured per-worker rate it projects 1, 10 and 100 nodes on 1M and 100M texts and
names the bound that stops scaling.

    python bench/scale.py                     # 2000 texts and 400 checks, about four minutes on 2 cores
    python bench/scale.py --n 4000 --cores-per-node 32 --json-out bench/out/scale.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from core import executor  # noqa: E402
from core.config import BUNDLED_MODEL  # noqa: E402

DIM, CLASSES = 384, 77  # MiniLM's embedding and a Banking77-sized head: what a worker returns per text


def texts(n: int) -> list[str]:
    base = pd.read_csv(REPO / "data" / "tickets_unlabeled.csv")["text"].astype(str).tolist()
    return [f"{base[i % len(base)]} #{i}" for i in range(n)]


def encode_rate(ex, items: list[str]) -> float:
    task = executor.EncoderEmbed(BUNDLED_MODEL, 64)
    # One untimed pass: loads the model (once per actor) and builds oneDNN's kernels for every batch shape, which
    # the first pass over a set pays (measured: 55 texts/s cold, 397 warm, locally).
    executor.map_texts(ex, task, items)
    start = time.perf_counter()
    out = executor.map_texts(ex, task, items)
    assert out.shape == (len(items), DIM)
    return len(items) / (time.perf_counter() - start)


class Returns(executor.Task):
    """What an encoding batch sends back, without the encoding: the driver's side of the traffic alone."""
    key = "returns"

    def run(self, held, batch):
        return np.zeros((len(batch), DIM), np.float32), np.zeros((len(batch), CLASSES), np.float32)


def driver_rate(ex, n: int) -> float:
    items = ["x"] * n
    executor.map_texts(ex, Returns(), items[:512])
    start = time.perf_counter()
    executor.map_texts(ex, Returns(), items)
    return n / (time.perf_counter() - start)


def migrations(n: int) -> list[dict]:
    """n SQL-skill candidates as curation hands them to the check: the grammar's migrations, every label and
    level, each claiming the label it was written for."""
    import random

    from core.curate import sql_migrations as grammar
    from core.sandbox import LABELS

    rng = random.Random(7)
    return [{"text": grammar.generate(LABELS[i % len(LABELS)], (i // len(LABELS)) % 4, rng)[0],
             "label": LABELS[i % len(LABELS)], "generator": "sql_migrations"} for i in range(n)]


def check_rate(ex, items: list[dict]) -> float:
    """Checks a second through the configured execution check (a throwaway PostgreSQL cluster; on Ray, one per
    actor), timed on a second pass so every cluster is started and its template built."""
    from core.config import CurateConfig
    from core.sandbox.check import open_check

    with open_check(CurateConfig(sandbox="local", sandbox_workers=2 if ex is None else 1), ex) as check:
        check.run(items[:64])
        start = time.perf_counter()
        verdicts = check.run(items)
        assert len(verdicts) == len(items)
        return len(items) / (time.perf_counter() - start)


def writer_rate(n: int) -> float:
    """Rows a second one DuckDB writer appends (a curated sample's columns), the store's single-writer ceiling."""
    import duckdb

    frame = pd.DataFrame({"cycle_id": 1, "generator": "self_label", "text": texts(n), "label": "billing",
                          "confidence": 0.9, "status": "kept", "reason": "verifiers agree", "scores": "{}"})
    with tempfile.TemporaryDirectory() as tmp:
        con = duckdb.connect(str(Path(tmp) / "w.duckdb"))
        con.execute("CREATE TABLE s AS SELECT * FROM frame LIMIT 0")
        start = time.perf_counter()
        con.execute("INSERT INTO s SELECT * FROM frame")
        rate = n / (time.perf_counter() - start)
        con.close()
    return rate


def project(per_worker: float, driver: float, writer: float, cores: int) -> list[dict]:
    rows = []
    for nodes in (1, 10, 100):
        compute = per_worker * cores * nodes
        bounds = {"workers": compute, "driver": driver, "single-writer store": writer}
        bound = min(bounds, key=bounds.get)
        for n in (1_000_000, 100_000_000):
            rows.append({"nodes": nodes, "items": n, "per_s": round(bounds[bound]),
                         "hours": round(n / bounds[bound] / 3600, 2), "bound": bound})
    return rows


def print_projection(what: str, per_worker: float, rows: list[dict], cores: int) -> None:
    print(f"\nprojection, {what}: {per_worker:.1f} a second per worker (1 core), {cores} workers a node")
    print(f"{'nodes':>5} {what:>12} {what + '/s':>10} {'hours':>8}  bound")
    for r in rows:
        print(f"{r['nodes']:>5} {r['items']:>12,} {r['per_s']:>10,} {r['hours']:>8}  {r['bound']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="texts encoded per setting")
    parser.add_argument("--checks", type=int, default=400, help="SQL migrations executed per setting")
    parser.add_argument("--cores-per-node", type=int, default=16, help="for the projection: one worker per core")
    parser.add_argument("--json-out")
    args = parser.parse_args()

    import ray

    items, checks = texts(args.n), migrations(args.checks)
    result: dict = {"texts": args.n, "checks": args.checks}
    result["local_texts_per_s"] = round(encode_rate(executor.LocalExecutor(), items), 1)
    print(f"local (this process, all cores): {result['local_texts_per_s']:8.1f} texts/s")
    result["local_checks_per_s"] = round(check_rate(None, checks), 1)
    print(f"local (one cluster, 2 sessions): {result['local_checks_per_s']:8.1f} checks/s")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _node_ip_address="127.0.0.1", runtime_env={"py_modules": [str(REPO / "core")]})
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        for workers in (1, 2):
            with executor.RayExecutor("", workers=workers) as ex:
                rate = encode_rate(ex, items)
                result[f"ray_{workers}_texts_per_s"] = round(rate, 1)
                print(f"ray, {workers} worker{'s' if workers > 1 else ' '}:              {rate:8.1f} texts/s")
                rate = check_rate(ex, checks)
                result[f"ray_{workers}_checks_per_s"] = round(rate, 1)
                print(f"ray, {workers} worker{'s' if workers > 1 else ' '} (a cluster each): {rate:6.1f} checks/s")
                if workers == 2:
                    result["driver_texts_per_s"] = round(driver_rate(ex, 50_000))
    finally:
        ray.shutdown()
    # Local again, after Ray: on a shared machine the load changes; the better of the two runs is kept.
    again = encode_rate(executor.LocalExecutor(), items)
    print(f"local, measured again:           {again:8.1f} texts/s")
    result["local_texts_per_s"] = round(max(result["local_texts_per_s"], again), 1)
    result["writer_rows_per_s"] = round(writer_rate(100_000))
    per_worker = result["ray_1_texts_per_s"]
    print(f"driver collects {result['driver_texts_per_s']:,} texts/s of results "
          f"({(DIM + CLASSES) * 4 / 1024:.1f} KiB each); one DuckDB writer appends {result['writer_rows_per_s']:,} rows/s")
    result["projection"] = project(per_worker, result["driver_texts_per_s"], result["writer_rows_per_s"],
                                   args.cores_per_node)
    print_projection("texts", per_worker, result["projection"], args.cores_per_node)
    # A verdict is a few hundred bytes: the driver is no bound for checks; one sandbox per worker is (memory).
    per_check = result["ray_1_checks_per_s"]
    result["check_projection"] = project(per_check, float("inf"), result["writer_rows_per_s"], args.cores_per_node)
    print_projection("checks", per_check, result["check_projection"], args.cores_per_node)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
