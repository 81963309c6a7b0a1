"""Diagnosis benchmark: wall time and peak memory of one full self-diagnosis on the Banking77 protocol.

A baseline is trained on the protocol's seed (10 per intent), then the production model diagnoses
itself on the 385-row held-out set: error pairs and clusters, Captum attributions for up to
--max-attributions misclassified examples, activation statistics and attention-head importance.

    python bench/diagnose.py                      # target: at most 2 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.banking77 import DEFAULT_DATA, DEV_SIZE, build_config, split_protocol  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/diagnose.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--max-attributions", type=int, default=300)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = p.parse_args(argv)
    if not (args.data / "train.csv").is_file():
        print(f"error: Banking77 data not found: {args.data / 'train.csv'} is missing (pass --data DIR)",
              file=sys.stderr)
        return 2
    from core import cycle

    config = build_config(args.overrides + [f"diagnose.max_attributions={args.max_attributions}"])
    seed_df, held_df, pool_df, _ = split_protocol(args.data / "train.csv", 0, DEV_SIZE)
    work = Path(tempfile.mkdtemp(prefix="evolab-diagnose-"))
    seed_df.to_csv(work / "seed.csv", index=False)
    held_df.to_csv(work / "heldout.csv", index=False)
    from core.setup import init_workspace

    ws = init_workspace(work / "ws", work / "seed.csv", None, work / "heldout.csv", config=config)
    t0 = time.perf_counter()
    cid = cycle.start_cycle(ws)
    cycle.run_cycle(ws, cid, progress=False)
    train_s = time.perf_counter() - t0
    version = ws.store.alias("production")
    cycle.ensure_evaluated(ws, version)  # evaluation is the engine's, not the diagnosis's, work
    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    found = cycle.run_diagnosis(ws, 0, version, None)
    seconds = time.perf_counter() - t0
    findings, attributions = found["findings"], found["attributions"]
    errors = int((~attributions["correct"]).sum()) if len(attributions) else 0
    print(f"banking77 diagnosis of {version} (baseline trained in {train_s:.0f}s)")
    print(f"held-out rows      {len(held_df)}")
    print(f"attributions       {len(attributions)} ({errors} misclassified, cap {args.max_attributions})")
    print(f"findings           {len(findings)} "
          f"({', '.join(f'{k} {v}' for k, v in findings['kind'].value_counts().items())})")
    for r in findings.head(5).itertuples():
        print(f"  {r.rank}. {r.kind:<14} {r.subject[:60]:<60} errors={r.severity:.0f}")
    heads = found["internals"].get("heads", {})
    if heads:
        print(f"heads              {heads['reason']}")
    choice = found["internals"].get("lora_choice")
    if choice:
        print(f"next LoRA layers   {choice['reason']}")
    print(f"wall time          {seconds:.1f} s   (target <= 120 s on 2 cores)")
    print(f"peak memory        {peak_rss_mb():.0f} MB RSS (before diagnosis {rss_before:.0f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
