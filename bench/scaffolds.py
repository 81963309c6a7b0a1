"""Scaffolds on the Banking77 protocol: each built-in's development-test accuracy and the searched winner's.

Uses bench/banking77.py's protocol split (seed 10/intent, held-out 5/intent, a fixed 1,500-row dev test
set never shown to the engine). Trains the baseline on the seed, runs one scaffold search (budget N) with
its A/B test on the held-out set, then scores every built-in, the search winner and the production
scaffold on the dev test set: accuracy (an abstention counts as wrong) with a 95% Wilson interval,
coverage, and the paired bootstrap CI of each one's difference from the default built-in.

    python bench/scaffolds.py --budget 12
    python bench/scaffolds.py --budget 6 --set train.epochs=1 --dev-size 800
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.banking77 import DEFAULT_DATA, DEV_SIZE, BenchError, build_config, split_protocol  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/scaffolds.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=int, default=12, help="new scaffolds the search evaluates (default 12)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--seed", type=int, default=0, help="numpy default_rng seed for the dev-test hold-out")
    p.add_argument("--dev-size", type=int, default=DEV_SIZE)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--keep", action="store_true", help="keep the temp work folder")
    return p


def _ci(lo: float, hi: float) -> str:
    return f"[{100 * lo:5.1f}, {100 * hi:5.1f}]"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.data / "train.csv").is_file():
        print(f"error: Banking77 data not found: {args.data / 'train.csv'} is missing (pass --data DIR)",
              file=sys.stderr)
        return 2
    try:
        config = build_config(args.overrides)
        seed_df, held_df, pool_df, dev_df = split_protocol(args.data / "train.csv", args.seed, args.dev_size)
    except (BenchError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.budget < 1:
        print("error: --budget must be at least 1", file=sys.stderr)
        return 2

    from core import cycle, registry
    from core.scaffolds import abtest, archive, spec as S
    from core.scaffolds.evaluate import correct_vector
    from core.scaffolds.run import Batch, bank_for, llm_asker
    from core.setup import init_workspace

    work = Path(tempfile.mkdtemp(prefix="evolab-scaffolds-"))
    t0 = time.perf_counter()
    try:
        seed_df.to_csv(work / "seed.csv", index=False)
        held_df.to_csv(work / "heldout.csv", index=False)
        pool_df.to_csv(work / "unlabeled.csv", index=False)
        ws = init_workspace(work / "workspace", work / "seed.csv", work / "unlabeled.csv", work / "heldout.csv",
                            "text", "label", None, config)
        print(f"banking77: seed {len(seed_df):,}, held-out {len(held_df):,}, dev test {len(dev_df):,}; "
              f"search budget {args.budget}, test {config.scaffolds.test}, alpha {config.scaffolds.alpha}", flush=True)
        baseline = cycle.run_cycle(ws, cycle.start_cycle(ws), progress=False)
        t_train = time.perf_counter() - t0
        print(f"baseline: {baseline.message} ({t_train:.0f}s)", flush=True)

        t1 = time.perf_counter()
        outcome = cycle.run_scaffold_cycle(ws, budget=args.budget, progress=False)
        trial = ws.store.scaffold_trial(outcome.cycle_id)
        checks = trial["result"]["checks"]
        t_search = time.perf_counter() - t1
        print(f"search: {outcome.message}; winner {trial['candidate_id']} ({t_search:.0f}s)")
        print(f"  A/B on the trial's A/B half of the selection rows (n={checks['n']}): {'; '.join(checks['reasons'])}")

        loaded = registry.load(ws, "v1")
        batch = Batch(loaded, dev_df["text"].tolist(), bank_for(ws, loaded), llm_asker(config.scaffolds.llm),
                      config.scaffolds.seed)
        truth = dev_df["label"].to_numpy(dtype=object)
        ids = archive.ensure_builtins(ws.store)
        rows = [("built-in", ids[name]) for name in S.BUILTINS]
        rows.append(("searched winner", trial["candidate_id"]))
        production = ws.store.production_scaffold() or ids[S.DEFAULT]
        rows.append(("production after the gate", production))
        base_correct = correct_vector(archive.get(ws.store, ids[S.DEFAULT]), batch, truth)[0]
        print()
        print(f"{'scaffold':<26} {'id':<22} {'dev acc':>8} {'95% CI':>16} {'coverage':>9} "
              f"{'vs ' + S.DEFAULT:>28}  steps")
        for label, sid in rows:
            spec = archive.get(ws.store, sid)
            correct, abstained, _ = correct_vector(spec, batch, truth)
            lo, hi = abtest.wilson(correct)
            diff = abtest.paired_bootstrap(base_correct, correct, config.scaffolds.bootstrap_iterations, 0.05)
            print(f"{label:<26} {sid:<22} {100 * correct.mean():7.2f}% {_ci(lo, hi):>16} "
                  f"{100 * (1 - abstained.mean()):8.1f}% {100 * diff['difference']:+6.2f}pp "
                  f"{_ci(diff['ci_low'], diff['ci_high']):>16}  {S.describe(spec)}")
        print()
        print(f"time: baseline training {t_train:.0f}s, search + A/B {t_search:.0f}s, "
              f"total {time.perf_counter() - t0:.0f}s")
    finally:
        if args.keep:
            print(f"work      {work} (kept)")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
