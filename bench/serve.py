"""Serving benchmark: the HTTP server next to the bare model's forward pass, in the same run.

Batch 1: p50/p99 latency of one short text (end to end over loopback HTTP, and `predict_proba` alone);
batch 32: texts per second. Targets: p50 at most 25 ms at batch 1 on 2 cores; batched throughput at
least 80% of the bare forward pass.

    python bench/serve.py                       # builds a small workspace (a quick baseline) in a temp folder
    python bench/serve.py --workspace W         # serves W's production model instead
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHORT = "my card payment was declined"


def build_workspace(work: Path):
    """A workspace on the bundled ticket data with a production model trained for a few steps: serving cost
    depends on the architecture and max_length, not on how well the model was trained."""
    from core import cycle
    from core.actions import make_autonomous
    from core.config import Config
    from core.setup import init_workspace

    config = Config()
    make_autonomous(config)
    config.train.max_steps, config.train.head_warmup_steps = 5, 5
    ws = init_workspace(work / "ws", REPO / "data" / "tickets_labeled.csv", None,
                        REPO / "data" / "tickets_heldout.csv", config=config)
    cycle.run_cycle(ws, cycle.start_cycle(ws), progress=False)
    return ws


def timed(fn, n: int) -> np.ndarray:
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        fn()
        out[i] = (time.perf_counter() - t0) * 1000
    return out


def start_server(ws, threads: int):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "core", "serve", "--workspace", str(ws.root), "--port", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx

    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"error: server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.2)
        if time.monotonic() > deadline:
            raise SystemExit("error: server did not start")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/serve.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--workspace", type=Path, help="serve this workspace's production model")
    p.add_argument("--requests", type=int, default=300, help="batch-1 requests timed")
    p.add_argument("--batches", type=int, default=40, help="batch-32 requests timed")
    p.add_argument("--threads", type=int, default=2, help="torch threads, in both the bench and the server")
    args = p.parse_args(argv)

    # The same OpenMP setting in the bench and the server, whichever thread runs the forward pass.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import httpx
    import pandas as pd
    import torch

    from core import model as M, registry
    from core.workspace import open_workspace

    torch.set_num_threads(args.threads)
    work = None
    if args.workspace:
        ws = open_workspace(args.workspace)
    else:
        work = Path(tempfile.mkdtemp(prefix="evolab-serve-bench-"))
        print("building a workspace with a quick baseline ...", file=sys.stderr, flush=True)
        ws = build_workspace(work)
    try:
        texts = pd.read_csv(REPO / "data" / "tickets_unlabeled.csv")["text"].head(32).tolist()
        loaded = registry.load_alias(ws)
        # The forward pass runs on a worker thread, as the server runs it: on a busy machine OpenMP in the
        # main thread measured several times slower, which would flatter the server.
        worker = ThreadPoolExecutor(1)

        def bare(batch):
            worker.submit(M.predict_proba, loaded, batch).result()
        for _ in range(10):
            bare([SHORT])
            bare(texts)
        bare1 = timed(lambda: bare([SHORT]), args.requests)
        bare32 = timed(lambda: bare(texts), args.batches)
        worker.shutdown()
        del loaded

        proc, base = start_server(ws, args.threads)
        try:
            with httpx.Client(base_url=base, timeout=60) as client:
                def ask(batch):
                    r = client.post("/predict", json={"texts": batch})
                    r.raise_for_status()
                for _ in range(20):
                    ask([SHORT])
                    ask(texts)
                http1 = timed(lambda: ask([SHORT]), args.requests)
                http32 = timed(lambda: ask(texts), args.batches)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    finally:
        if work:
            shutil.rmtree(work, ignore_errors=True)

    def row(name, b1, b32):
        return (f"{name:<22} {np.percentile(b1, 50):>9.2f} {np.percentile(b1, 99):>9.2f} "
                f"{1000 / b1.mean():>12.1f} {32 * 1000 / b32.mean():>14.1f}")
    print(f"serving benchmark: {os.cpu_count()} cores, torch threads {args.threads}, "
          f"{args.requests} batch-1 and {args.batches} batch-32 requests, text {SHORT!r}")
    print(f"{'':<22} {'p50 ms':>9} {'p99 ms':>9} {'req/s (b=1)':>12} {'texts/s (b=32)':>14}")
    print(row("bare predict_proba", bare1, bare32))
    print(row("HTTP /predict", http1, http32))
    ratio = bare32.mean() / http32.mean()
    p50 = float(np.percentile(http1, 50))
    print(f"batch-1 p50 {p50:.2f} ms (target <= 25 ms: {'met' if p50 <= 25 else 'MISSED'}); "
          f"batch-32 throughput {ratio:.0%} of the bare forward pass (target >= 80%: "
          f"{'met' if ratio >= 0.8 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
