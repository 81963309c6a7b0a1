"""One evaluation harness for gates, diagnosis and benchmarks: predictions, accuracy, per-class figures."""
from __future__ import annotations

import numpy as np
import pandas as pd

from core import model as M


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


def probe_predictions(loaded: M.Loaded, probe: pd.DataFrame, progress: bool = False) -> pd.DataFrame:
    """The version's answer and confidence on each traffic-probe row (example_id, predicted, confidence)."""
    if probe.empty:
        return pd.DataFrame({"example_id": pd.Series(dtype="int64"), "predicted": pd.Series(dtype=str),
                             "confidence": pd.Series(dtype=float)})
    probs = M.predict_proba(loaded, probe["text"].tolist(), progress=progress)
    return pd.DataFrame({"example_id": probe["id"].to_numpy(),
                         "predicted": np.asarray(loaded.labels, dtype=object)[probs.argmax(1)],
                         "confidence": probs.max(1).astype(float)})
