"""Curation: pseudo-labels from the unlabeled pool kept above a confidence bar, capped per class.

Every pool row becomes a sample with its status and the reason it was kept or dropped.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from core.config import CurateConfig

GENERATOR = "pseudo_label"
SAMPLE_COLUMNS = ["generator", "parent_id", "text", "label", "confidence", "difficulty", "scores", "status",
                  "reason"]


def difficulty_level(margin: np.ndarray) -> np.ndarray:
    """0 easy .. 3 hard, from the model's top-1 minus top-2 probability."""
    return np.digitize(margin, [0.25, 0.5, 0.75])[::1].choose([3, 2, 1, 0]) if len(margin) else margin


def pseudo_label(pool: pd.DataFrame, probs: np.ndarray, labels: list[str], cfg: CurateConfig,
                 favoured: set[str] | None = None) -> pd.DataFrame:
    favoured = favoured or set()
    top2 = np.sort(probs, axis=1)[:, -2:] if len(probs) else np.zeros((0, 2))
    confidence = top2[:, 1] if len(probs) else np.zeros(0)
    margin = top2[:, 1] - top2[:, 0] if len(probs) else np.zeros(0)
    predicted = np.asarray(labels, dtype=object)[probs.argmax(1)] if len(probs) else np.zeros(0, dtype=object)
    frame = pd.DataFrame({"generator": GENERATOR, "parent_id": pool["id"].to_numpy(), "text": pool["text"].to_numpy(),
                          "label": predicted, "confidence": confidence.astype(float),
                          "difficulty": difficulty_level(margin).astype(int),
                          "scores": [json.dumps({"model_confidence": round(float(c), 4),
                                                 "margin": round(float(m), 4)}) for c, m in zip(confidence, margin)]})
    frame["status"] = "dropped"
    frame["reason"] = f"confidence below {cfg.min_confidence}"
    confident = frame["confidence"] >= cfg.min_confidence
    # Weak classes may take half again as many samples: that is where the errors are.
    for label, group in frame[confident].groupby("label"):
        cap = int(cfg.max_per_class * (1.5 if label in favoured else 1.0))
        ranked = group.sort_values("confidence", ascending=False)
        keep, over = ranked.index[:cap], ranked.index[cap:]
        frame.loc[keep, ["status", "reason"]] = ["kept", "confident pseudo-label"]
        frame.loc[over, ["status", "reason"]] = ["dropped", f"over the class cap of {cap}"]
    return frame[SAMPLE_COLUMNS]
