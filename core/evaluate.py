"""One evaluation harness for gates, diagnosis and benchmarks: predictions, accuracy, per-class figures."""
from __future__ import annotations

import numpy as np
import pandas as pd

from core import model as M
from core import stats


def score(examples: pd.DataFrame, probs: np.ndarray, labels: list[str]) -> tuple[pd.DataFrame, float, dict]:
    """examples: id, text, label. Returns per-example results, accuracy and per-class recall/precision."""
    pred_idx = probs.argmax(1)
    predicted = np.asarray(labels, dtype=object)[pred_idx]
    correct = predicted == examples["label"].to_numpy()
    results = pd.DataFrame({"example_id": examples["id"].to_numpy(), "predicted": predicted,
                            "confidence": probs.max(1).astype(float), "correct": correct})
    per_class = {}
    truth = examples["label"].to_numpy()
    for label in labels:
        support = int((truth == label).sum())
        predicted_n = int((predicted == label).sum())
        hits = int(((truth == label) & correct).sum())
        per_class[label] = {"support": support,
                            "recall": hits / support if support else None,
                            "precision": hits / predicted_n if predicted_n else None}
    accuracy = float(correct.mean()) if len(correct) else 0.0
    return results, accuracy, per_class


def evaluate_parts(loaded: M.Loaded, parts: dict[str, pd.DataFrame], progress: bool = False) -> dict:
    """One prediction pass over every part, each scored on its own: {part: (results, accuracy, per_class)}."""
    names = [name for name in parts if len(parts[name])]
    texts = [t for name in names for t in parts[name]["text"].tolist()]
    probs = M.predict_proba(loaded, texts, progress=progress) if texts else np.zeros((0, len(loaded.labels)))
    out, start = {}, 0
    for name in names:
        end = start + len(parts[name])
        out[name] = score(parts[name], probs[start:end], loaded.labels)
        start = end
    return out


def traffic_estimate(loaded: M.Loaded, gate_results: pd.DataFrame, probe: pd.DataFrame,
                     progress: bool = False) -> dict | None:
    """The version's expected accuracy on traffic (stats.traffic_estimate) from its gate-row results
    (confidence, correct) and the traffic probe's texts; None without a probe."""
    if probe.empty or gate_results.empty:
        return None
    confidence = M.predict_proba(loaded, probe["text"].tolist(), progress=progress).max(1)
    return stats.traffic_estimate(gate_results["confidence"], gate_results["correct"], confidence)
