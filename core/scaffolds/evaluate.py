"""Scoring a scaffold on labeled texts: accuracy (an abstention is not correct), coverage, selective
accuracy, and the guardrail pass rate (an abstained probe did not reach its queue, so it fails)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from core.scaffolds.run import Batch, execute


def split_heldout(rows: pd.DataFrame, search_fraction: float, seed) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(search part, A/B part) of labeled rows: each class dealt to both parts in proportion, in a seeded order.
    Fraction 0, or rows too few for two parts, gives both the whole set."""
    if search_fraction <= 0 or len(rows) < 2:
        return rows, rows
    rng = np.random.default_rng(seed)
    labels = rows["label"].unique()
    rank = dict(zip(labels, rng.permutation(len(labels))))
    order = rows.assign(rank=rows["label"].map(rank), draw=rng.random(len(rows))).sort_values(["rank", "draw"]).index
    # Dealt in turn from a random start, classes in a random order: each class goes to both parts in proportion,
    # and a class of one row to either part.
    k, start = np.arange(len(order)), rng.random()
    to_search = np.floor((k + 1) * search_fraction + start) > np.floor(k * search_fraction + start)
    search, ab = rows.loc[order[to_search]].sort_index(), rows.loc[order[~to_search]].sort_index()
    if search.empty or ab.empty:
        return rows, rows
    return search.reset_index(drop=True), ab.reset_index(drop=True)


def trial_rows(store, cfg, cycle_id: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(search part, A/B part) for one scaffold trial: the held-out set's selection rows only, since the gate rows
    grade models and nothing else, split afresh for each trial (seeded by scaffolds.seed and the cycle), so no
    half is reused by every trial and a search cannot tune to it."""
    return split_heldout(store.heldout("selection"), cfg.search_fraction, [cfg.seed, cycle_id])


def correct_vector(spec: dict, batch: Batch, truth) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(correct, abstained, notes) per text; an abstained text is never correct."""
    out = execute(spec, batch)
    predicted = np.asarray(batch.labels, dtype=object)[out.predicted]
    correct = (predicted == np.asarray(truth, dtype=object)) & ~out.abstained
    return correct, out.abstained, out.notes


def summarize(correct: np.ndarray, abstained: np.ndarray) -> dict:
    n, answered = len(correct), int((~abstained).sum())
    return {"n": n, "accuracy": float(correct.mean()) if n else 0.0,
            "coverage": answered / n if n else 0.0,
            "selective_accuracy": float(correct[~abstained].mean()) if answered else None}


def guardrail_pass(spec: dict, batch: Batch | None, expected) -> float | None:
    if batch is None or not len(batch.texts):
        return None
    return float(correct_vector(spec, batch, expected)[0].mean())


def score(spec: dict, batch: Batch, truth, guard_batch: Batch | None, guard_expected) -> tuple[dict, np.ndarray]:
    """Metrics of one scaffold (and its correct vector, for paired tests)."""
    correct, abstained, notes = correct_vector(spec, batch, truth)
    metrics = summarize(correct, abstained)
    metrics["guardrail_pass"] = guardrail_pass(spec, guard_batch, guard_expected)
    metrics["detail"] = {"notes": notes}
    return metrics, correct
