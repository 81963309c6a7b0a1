"""The Synthetic data page on a million samples and the Overview on 200 cycles, through AppTest.

    python bench/dashboard.py [--rows 1000000] [--chunk 250000] [--cycles 200] [--work DIR] [--keep]
    python bench/dashboard.py --work DIR     # again on the workspace an earlier run kept in DIR

Creates a workspace on the bundled ticket data and writes, through the Store's own write methods, `--cycles`
cycles with their whole story: a baseline, then evolve cycles with a diagnosis, stage runs, a registered
candidate, its gate evaluation and a promotion gate decided by a person, the policy or auto-approve (about a
third rejected), the newest waiting at its gate. The first rows/chunk cycles carry the synthetic samples
(Store.save_samples replaces a cycle's samples, so one chunk per cycle). Then, signed in as an approver, it
times with streamlit.testing.v1.AppTest the Synthetic data page's first render, a status filter change, the
Overview's first render (data cache cleared first), and the store's reads alone.
Targets on 2 cores: first render <= 1.5 s (both pages), filter change <= 1 s.
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


DIAGNOSE = ["diagnose", "curate", "data_review", "train", "evaluate", "drift", "gate", "promote"]
BASELINE = ["train", "evaluate", "gate", "promote"]
DECIDERS = [("alice", False), ("auto", True), ("auto-approve", True)]
BENCH_USER, BENCH_PASSWORD = "bench", "bench-password-1"


def fill(ws, rows: int, chunk: int, cycles: int, seed: int = 0) -> float:
    """`cycles` cycles with their story, the samples spread one chunk per cycle over the first ones."""
    from datetime import timedelta

    from core.store import utcnow

    labeled = pd.read_csv(DATA / "tickets_labeled.csv")
    pool = pd.read_csv(DATA / "tickets_unlabeled.csv")
    labels = sorted(labeled["label"].unique())
    texts = pd.concat([labeled["text"], pool["text"]]).astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    store = ws.store
    gate_rows = store.heldout("gate")["id"].to_numpy()
    t0 = time.perf_counter()
    done, production, accuracy = 0, None, 0.60
    cycles = max(cycles, -(-rows // chunk) + 1)  # the baseline carries no samples
    for i in range(cycles):
        baseline = production is None
        stages = BASELINE if baseline else DIAGNOSE
        cid = store.create_cycle("baseline" if baseline else "evolve", stages[0], production, "bench")
        if not baseline:
            findings = pd.DataFrame({"rank": [1, 2], "kind": ["confusion_pair", "weak_class"],
                                     "subject": [" -> ".join(rng.choice(labels, 2, replace=False)),
                                                 str(rng.choice(labels))],
                                     "severity": [12.0, 5.0], "detail": ["{}", "{}"],
                                     "action": ["generate samples separating the pair", "more samples"]})
            store.save_diagnosis(cid, findings, "curate")
            n = min(chunk, rows - done)
            if n > 0:
                store.save_samples(cid, synthetic_frame(n, done, labels, texts, rng), "train")
                done += n
            else:
                store.set_stage(cid, "train")
        version = f"v{i + 1}"
        store.register_version(version, i + 1, cid, production, "bench", "", {}, {"train_rows": 1000}, "bench")
        # accuracy climbs from 0.60 to 0.90 over the cycles; a third of the candidates fall short of production
        n_rows, better = len(gate_rows), rng.random() > 1 / 3
        right = round((0.60 + 0.30 * i / cycles) * n_rows) + (int(rng.integers(1, 3)) if better
                                                                 else -int(rng.integers(1, 3)))
        correct = rng.permutation(np.arange(n_rows) < min(max(right, 0), n_rows))
        results = pd.DataFrame({"example_id": gate_rows, "predicted": rng.choice(labels, len(gate_rows)),
                                "confidence": rng.random(len(gate_rows)), "correct": correct})
        store.save_evaluation(version, {"gate": (results, float(correct.mean()), {})}, cid, "gate")
        started = utcnow() - timedelta(minutes=10)
        for stage in stages[:-1]:
            seconds = float(rng.uniform(1, 200))
            store.record_stage_run(cid, stage, started, seconds, 500.0)
            started += timedelta(seconds=seconds)
        gain = float(correct.mean()) - accuracy
        checks = {"passed": better, "gain": gain, "reasons": [f"accuracy gain {gain:+.4f}"]}
        gid = store.open_gate(cid, "promotion", "human", checks, utcnow() + timedelta(hours=72))
        if i == cycles - 1 and not baseline:  # the newest waits for a person
            store.set_cycle_waiting(cid, True)
            break
        by, automatic = DECIDERS[i % len(DECIDERS)]
        if baseline or better:  # the figures are for rendering, not a study: the mix is what matters
            store.decide_gate(gid, True, by, "checks passed", automatic)
            store.promote(cid, version, by, f"gate {gid}")
            production, accuracy = version, float(correct.mean())
        else:
            store.decide_gate(gid, False, by, f"checks failed: accuracy gain {gain:+.4f}", automatic)
            store.reject_cycle(cid, by, "checks failed")
        if (i + 1) % 25 == 0 or 1 <= i <= -(-rows // chunk):
            print(f"  {i + 1} cycles, {done:,} samples ({time.perf_counter() - t0:.1f} s)", flush=True)
    return time.perf_counter() - t0


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=250_000)
    parser.add_argument("--cycles", type=int, default=200, help="cycles on the Overview")
    parser.add_argument("--work", type=Path, help="folder for the workspace (default: a temp folder); kept, and "
                                                  "timed again without refilling when it already holds one")
    parser.add_argument("--keep", action="store_true", help="keep the workspace")
    args = parser.parse_args(argv)

    import streamlit as st
    from streamlit.logger import set_log_level
    from streamlit.testing.v1 import AppTest

    set_log_level("error")  # no "No runtime found" warnings: outside a server is what a bench is

    from app import nav, queries
    from core import auth
    from core.config import Config
    from core.setup import init_workspace
    from core.workspace import open_workspace

    work = args.work or Path(tempfile.mkdtemp(prefix="evolab-bench-dashboard-"))
    root = work / "ws"
    try:
        if args.work and (root / "evolab.duckdb").exists():  # a workspace an earlier run kept: time it again
            ws, insert_s = open_workspace(root), 0.0
            print(f"workspace {root} reused")
        else:
            t0 = time.perf_counter()
            ws = init_workspace(root, DATA / "tickets_labeled.csv", DATA / "tickets_unlabeled.csv",
                                DATA / "tickets_heldout.csv", config=Config())
            print(f"workspace {root} created in {time.perf_counter() - t0:.1f} s")
            insert_s = fill(ws, args.rows, args.chunk, args.cycles)
            auth.add_user(ws.store, BENCH_USER, "approver", BENCH_PASSWORD)
        total = ws.store.sample_page(1, 1)[1]
        n_cycles = len(ws.store.cycles())
        db_mb = ws.db.stat().st_size / 2**20
        print(f"{total:,} samples and {n_cycles} cycles in the store ({insert_s:.1f} s to write, "
              f"database {db_mb:.0f} MB)")

        # The store's reads alone (what the pages ask for: page 1 of 50, then status = kept; the overview's).
        page_all, (_, n_all, _) = timed(lambda: ws.store.sample_page(1, 50))
        page_kept, (_, n_kept, _) = timed(lambda: ws.store.sample_page(1, 50, status="kept"))
        facets_s, _ = timed(ws.store.sample_facets)
        timeline_s, _ = timed(ws.store.cycle_timeline)
        attention_s, _ = timed(ws.store.attention)

        # The pages, as a browser session drives them: sign in (lands on the overview), then each page.
        os.environ[queries.ENV_VAR] = str(root)
        st.cache_data.clear()
        at = AppTest.from_file(str(MAIN), default_timeout=600)
        at.run()
        at.text_input(key="signin_name").input(BENCH_USER)
        at.text_input(key="signin_password").input(BENCH_PASSWORD)
        signin_s, _ = timed(at.button(key="signin_submit").click().run)
        assert not at.exception, [e.value for e in at.exception]
        at.switch_page(nav.path("synthetic_data"))
        st.cache_data.clear()
        first_s, _ = timed(at.run)
        assert not at.exception, [e.value for e in at.exception]
        caption = next((c.value for c in at.caption if "matching samples" in c.value), "")
        status_box = next(b for b in at.selectbox if b.label == "Status")
        status_box.select("kept")
        filter_s, _ = timed(at.run)
        assert not at.exception, [e.value for e in at.exception]
        caption_kept = next((c.value for c in at.caption if "matching samples" in c.value), "")
        shown = at.dataframe[0].value
        status_column = next(c for c in shown.columns if str(c).lower() == "status")
        assert set(shown[status_column]) == {"kept"}

        at.switch_page(nav.path("overview"))
        st.cache_data.clear()
        overview_s, _ = timed(at.run)
        assert not at.exception, [e.value for e in at.exception]
        story = next(d.value for d in at.dataframe if "Outcome" in d.value.columns)
        assert len(story) == n_cycles, (len(story), n_cycles)
        rejected = int(story["Outcome"].str.contains("rejected").sum())

        def verdict(value: float, target: float) -> str:
            return "OK" if value <= target else "OVER TARGET"

        print()
        print(f"machine: {os.cpu_count()} CPUs ({platform.machine()}, {platform.system()} "
              f"{platform.release()}), Python {platform.python_version()}")
        print(f"Store.sample_page page 1 of 50, no filter      : {page_all:7.3f} s  ({n_all:,} matching)")
        print(f"Store.sample_page page 1 of 50, status = kept  : {page_kept:7.3f} s  ({n_kept:,} matching)")
        print(f"Store.sample_facets                            : {facets_s:7.3f} s")
        print(f"{f'Store.cycle_timeline ({n_cycles} cycles)':<47}: {timeline_s:7.3f} s")
        print(f"Store.attention                                : {attention_s:7.3f} s")
        print(f"Sign-in, landing on the overview (imports)     : {signin_s:7.3f} s")
        print(f"Synthetic data page, first render              : {first_s:7.3f} s  target <= {TARGET_FIRST} s "
              f"on 2 cores: {verdict(first_s, TARGET_FIRST)}   [{caption}]")
        print(f"Synthetic data page, filter status = kept      : {filter_s:7.3f} s  target <= {TARGET_FILTER} s "
              f"on 2 cores: {verdict(filter_s, TARGET_FILTER)}   [{caption_kept}]")
        print(f"{f'Overview, first render ({n_cycles} cycles)':<47}: {overview_s:7.3f} s  target <= {TARGET_FIRST} s "
              f"on 2 cores: {verdict(overview_s, TARGET_FIRST)}   [{len(story)} rows, {rejected} rejected]")
        return 0
    finally:
        if args.keep or args.work:
            print(f"workspace kept in {root}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
