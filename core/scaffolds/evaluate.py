"""Scoring a scaffold on labeled texts: accuracy (an abstention is not correct), coverage, selective
accuracy, and the guardrail pass rate (an abstained probe did not reach its queue, so it fails)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from core.data import stratified_split
from core.scaffolds.run import Batch, execute


def split_heldout(heldout: pd.DataFrame, search_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(search part, A/B part) of the held-out set, stratified by label; fraction 0 gives both the whole set."""
    if search_fraction <= 0 or len(heldout) < 2:
        return heldout, heldout
    ab, search = stratified_split(heldout.assign(row_num=heldout["id"]), search_fraction, seed)
    return search.drop(columns="row_num"), ab.drop(columns="row_num")


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
