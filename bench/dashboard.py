"""The Synthetic data page on a million samples: first render and filter change, through AppTest.

    python bench/dashboard.py [--rows 1000000] [--chunk 250000] [--work DIR] [--keep]

Creates a workspace on the bundled ticket data, bulk-inserts synthetic samples through
Store.save_samples (one closed "evolve" cycle per chunk, since save_samples replaces a cycle's samples),
then times with streamlit.testing.v1.AppTest the Synthetic data page's first render, a status filter
change, and Store.sample_page alone. Targets: first render <= 1.5 s, filter change <= 1 s on 2 cores.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

DATA = ROOT / "data"
MAIN = ROOT / "app" / "main.py"
TARGET_FIRST, TARGET_FILTER = 1.5, 1.0
GENERATORS = ["self_label", "templates", "counterfactual", "llm"]
STATUSES = ["kept", "dropped", "verified"]
REASONS = {"kept": ["verifiers agree"], "verified": [""],
           "dropped": ["over the class cap of 200", "exact duplicate of a labeled example",
                       "near-duplicate (0.97) of a labeled example", "low confidence 0.31 < 0.6",
                       "contamination: 0.95 similar to held-out text"]}


def synthetic_frame(n: int, start: int, labels: list[str], texts: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    status = rng.choice(STATUSES, size=n, p=[0.4, 0.45, 0.15])
    reason = np.empty(n, dtype=object)
    for s, options in REASONS.items():
        mask = status == s
        reason[mask] = rng.choice(options, size=int(mask.sum()))
    confidence = rng.beta(5, 2, size=n).round(4)
    agree = rng.random(n).round(3)
    text = pd.Series(texts[rng.integers(0, len(texts), size=n)]).str.cat(
        pd.Series(np.arange(start, start + n)).astype(str), sep=" #")
    scores = pd.Series(confidence).map("{{\"confidence\": {:.4f}".format).str.cat(
        pd.Series(agree).map("\"agreement\": {:.3f}}}".format), sep=", ")
    parent = rng.integers(1, 10_000, size=n).astype("float64")
    parent[rng.random(n) < 0.3] = np.nan
    return pd.DataFrame({
        "generator": rng.choice(GENERATORS, size=n),
        "parent_id": pd.array(parent, dtype="Int64"),
        "text": text,
        "label": rng.choice(labels, size=n),
        "confidence": confidence,
        "difficulty": rng.integers(1, 6, size=n),
        "scores": scores,
        "status": status,
        "reason": reason,
    })


def fill(ws, rows: int, chunk: int, seed: int = 0) -> float:
    labeled = pd.read_csv(DATA / "tickets_labeled.csv")
    pool = pd.read_csv(DATA / "tickets_unlabeled.csv")
    labels = sorted(labeled["label"].unique())
    texts = pd.concat([labeled["text"], pool["text"]]).astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    store = ws.store
    t0 = time.perf_counter()
    done = 0
    while done < rows:
        n = min(chunk, rows - done)
        cid = store.create_cycle("evolve", "curate", None, "bench")
        store.save_samples(cid, synthetic_frame(n, done, labels, texts, rng), "train")
        store.set_stage(cid, "done", "done")  # close it, or the next create_cycle refuses
        done += n
        print(f"  inserted {done:,} samples ({time.perf_counter() - t0:.1f} s)", flush=True)
    return time.perf_counter() - t0


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=250_000)
    parser.add_argument("--work", type=Path, help="folder for the workspace (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the workspace")
    args = parser.parse_args(argv)

    import streamlit as st
    from streamlit.logger import set_log_level
    from streamlit.testing.v1 import AppTest

    set_log_level("error")  # no "No runtime found" warnings: outside a server is what a bench is

    from app import nav, queries
    from core.config import Config
    from core.setup import init_workspace

    work = args.work or Path(tempfile.mkdtemp(prefix="evolab-bench-dashboard-"))
    root = work / "ws"
    try:
        t0 = time.perf_counter()
        ws = init_workspace(root, DATA / "tickets_labeled.csv", DATA / "tickets_unlabeled.csv",
                            DATA / "tickets_heldout.csv", config=Config())
        print(f"workspace {root} created in {time.perf_counter() - t0:.1f} s")
        insert_s = fill(ws, args.rows, args.chunk)
        total = ws.store.sample_page(1, 1)[1]
        db_mb = ws.db.stat().st_size / 2**20
        print(f"{total:,} samples in the store ({insert_s:.1f} s to insert, database {db_mb:.0f} MB)")

        # The store's paged read alone (what the page asks for: page 1 of 50, then status = kept).
        page_all, (_, n_all, _) = timed(lambda: ws.store.sample_page(1, 50))
        page_kept, (_, n_kept, _) = timed(lambda: ws.store.sample_page(1, 50, status="kept"))
        facets_s, _ = timed(ws.store.sample_facets)

        # The page, as a browser session drives it.
        os.environ[queries.ENV_VAR] = str(root)
        st.cache_data.clear()
        at = AppTest.from_file(str(MAIN), default_timeout=600)
        overview_s, _ = timed(at.run)
        at.switch_page(nav.path("synthetic_data"))
        first_s, _ = timed(at.run)
        assert not at.exception, [e.value for e in at.exception]
        caption = next(c.value for c in at.caption if "matching samples" in c.value)
        status_box = next(b for b in at.selectbox if b.label == "Status")
        status_box.select("kept")
        filter_s, _ = timed(at.run)
        assert not at.exception, [e.value for e in at.exception]
        caption_kept = next(c.value for c in at.caption if "matching samples" in c.value)
        assert set(at.dataframe[0].value["Status"]) == {"kept"}

        def verdict(value: float, target: float) -> str:
            return "OK" if value <= target else "OVER TARGET"

        print()
        print(f"machine: {os.cpu_count()} CPUs ({platform.machine()}, {platform.system()} "
              f"{platform.release()}), Python {platform.python_version()}")
        print(f"Store.sample_page page 1 of 50, no filter      : {page_all:7.3f} s  ({n_all:,} matching)")
        print(f"Store.sample_page page 1 of 50, status = kept  : {page_kept:7.3f} s  ({n_kept:,} matching)")
        print(f"Store.sample_facets                            : {facets_s:7.3f} s")
        print(f"AppTest overview (first run of the app)        : {overview_s:7.3f} s")
        print(f"Synthetic data page, first render              : {first_s:7.3f} s  target <= {TARGET_FIRST} s "
              f"on 2 cores: {verdict(first_s, TARGET_FIRST)}   [{caption}]")
        print(f"Synthetic data page, filter status = kept      : {filter_s:7.3f} s  target <= {TARGET_FILTER} s "
              f"on 2 cores: {verdict(filter_s, TARGET_FILTER)}   [{caption_kept}]")
        return 0
    finally:
        if args.keep or args.work:
            print(f"workspace kept in {root}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
