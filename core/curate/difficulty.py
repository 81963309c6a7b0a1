"""The difficulty mix asked of each class moves with the last curation's results.

Two signals, both from rows no gate reads (the last curation's own samples, and the selection rows its
candidate was scored on):
- a class whose hard written samples (levels 2-3) were mostly dropped by the verifiers is asked for half of
  that hard share at level 1 instead: what was asked could not be written so that it holds;
- a class that gained nothing (its recall on the selection rows did not rise from the production version
  to the candidate) although samples were kept for it is asked for half of its easy share (levels 0-1) at
  level 3 instead: what it got taught it nothing.
A class with neither signal keeps the mix it was asked for last time.
"""
from __future__ import annotations

import json

import pandas as pd

from core.gates import TRAFFIC_LABELERS

HARD = (2, 3)
MIN_HARD = 4  # hard samples written before "mostly dropped" means anything
DROPPED_SHARE = 0.5


def _shift(mix: list[float], source: tuple[int, ...], to: int) -> list[float]:
    """Half of the mass at the source levels moves to level `to`."""
    total = sum(mix)
    out = [m / total for m in mix]
    for level in source:
        moved, out[level] = out[level] / 2, out[level] / 2
        out[to] += moved
    return [round(m, 4) for m in out]


def _recall(results: pd.DataFrame) -> pd.Series:
    return results.groupby("label")["correct"].mean() if len(results) else pd.Series(dtype=float)


def next_mixes(store, cycle_id: int, default_mix) -> tuple[dict[str, list[float]], dict[str, str]]:
    """(label -> mix, label -> why) for this cycle's curation, from the last evolution cycle before it that
    curated. default_mix(label): the mix a class is asked for where nothing moved it."""
    cycles = store.cycles()
    earlier = cycles[(cycles["kind"] == "evolve") & (cycles["id"] < cycle_id)].sort_values("id")
    for row in earlier[::-1].itertuples():
        samples = store.samples(int(row.id))
        if len(samples):
            break
    else:
        return {}, {}
    runs = store.stage_runs(int(row.id))
    curated = runs[runs["stage"] == "curate"]
    before = (json.loads(curated["detail"].iloc[-1] or "{}").get("difficulty") or {}).get("mixes") or {} \
        if len(curated) else {}
    recall_up = pd.Series(dtype=float)
    if pd.notna(row.candidate_version) and pd.notna(row.parent_version):
        cand = _recall(store.eval_results(row.candidate_version, "selection"))
        prod = _recall(store.eval_results(row.parent_version, "selection"))
        recall_up = (cand - prod.reindex(cand.index)).dropna()
    mixes, why = dict(before), {}
    written = samples[~samples["generator"].isin(TRAFFIC_LABELERS) & (samples["difficulty"] >= 0)]
    kept = samples[samples["status"].isin(["kept", "approved"])]
    for label in sorted(set(samples["label"])):
        mine = written[written["label"] == label]
        hard = mine[mine["difficulty"].isin(HARD)]
        verifiers_dropped = hard["reason"].str.startswith(("verifiers disagree", "held back"))
        current = before.get(label) or list(default_mix(label))
        if len(hard) >= MIN_HARD and verifiers_dropped.mean() > DROPPED_SHARE:
            mixes[label] = _shift(current, HARD, 1)
            why[label] = (f"{int(verifiers_dropped.sum())} of its {len(hard)} hard samples were dropped by the "
                          f"verifiers in cycle {row.id}: half of the hard share asked at level 1")
        elif label in recall_up.index and recall_up[label] <= 0 and (kept["label"] == label).any():
            mixes[label] = _shift(current, (0, 1), 3)
            why[label] = (f"its selection recall did not rise in cycle {row.id} ({recall_up[label]:+.2f}) with "
                          f"{int((kept['label'] == label).sum())} samples kept: half of the easy share asked at "
                          "level 3")
    return mixes, why
