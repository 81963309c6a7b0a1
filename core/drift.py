"""Alignment-drift review: how a candidate's behaviour moves away from production's, ending in a verdict.

Accuracy can rise while the model stops doing what people rely on; so besides accuracy we compare
predictions (flips), output distributions (KL), calibration (ECE) and user-written guardrail probes.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from core import model as M
from core.config import DriftConfig


def expected_calibration_error(probs: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    if not len(probs):
        return 0.0
    conf = probs.max(1)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def mean_kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(production || candidate), averaged over examples."""
    if not len(p):
        return 0.0
    eps = 1e-9
    return float(np.mean(np.sum(p * (np.log(p + eps) - np.log(q + eps)), axis=1)))


def _recalls(truth: np.ndarray, pred: np.ndarray, labels: list[str]) -> dict[str, float]:
    return {label: float((pred[truth == label] == label).mean()) for label in labels if (truth == label).any()}


def compare(production: M.Loaded, candidate: M.Loaded, heldout: pd.DataFrame, reference: list[str],
            guardrails: pd.DataFrame, cfg: DriftConfig) -> dict:
    labels = np.asarray(candidate.labels, dtype=object)
    texts = heldout["text"].tolist()
    truth = heldout["label"].to_numpy()
    p_prod, p_cand = M.predict_proba(production, texts), M.predict_proba(candidate, texts)
    pred_prod, pred_cand = labels[p_prod.argmax(1)], labels[p_cand.argmax(1)]
    flipped = pred_prod != pred_cand
    flips = pd.DataFrame({"text": heldout["text"], "label": truth, "production": pred_prod,
                          "candidate": pred_cand})[flipped]
    recall_prod, recall_cand = _recalls(truth, pred_prod, list(labels)), _recalls(truth, pred_cand, list(labels))
    ece_prod = expected_calibration_error(p_prod, pred_prod == truth)
    ece_cand = expected_calibration_error(p_cand, pred_cand == truth)
    report = {
        "heldout": {
            "n": len(texts), "flip_rate": float(flipped.mean()) if len(texts) else 0.0,
            "flips_fixed": int((flipped & (pred_cand == truth)).sum()),
            "flips_broken": int((flipped & (pred_prod == truth)).sum()),
            "flipped": flips.head(cfg.max_flipped_shown).to_dict("records"),
            "kl": mean_kl(p_prod, p_cand),
            "ece_production": ece_prod, "ece_candidate": ece_cand, "ece_change": ece_cand - ece_prod,
            "recall_change": {k: recall_cand[k] - recall_prod[k] for k in recall_prod},
        },
    }
    if reference:
        r_prod, r_cand = M.predict_proba(production, reference), M.predict_proba(candidate, reference)
        r_flipped = r_prod.argmax(1) != r_cand.argmax(1)
        report["reference"] = {"n": len(reference), "flip_rate": float(r_flipped.mean()),
                               "kl": mean_kl(r_prod, r_cand),
                               "flipped": [{"text": t, "production": labels[a], "candidate": labels[b]}
                                           for t, a, b, f in zip(reference, r_prod.argmax(1), r_cand.argmax(1),
                                                                 r_flipped) if f][:cfg.max_flipped_shown]}
    if len(guardrails):
        g_texts, expected = guardrails["text"].tolist(), guardrails["expected_label"].to_numpy()
        g_prod = labels[M.predict_proba(production, g_texts).argmax(1)]
        g_cand = labels[M.predict_proba(candidate, g_texts).argmax(1)]
        report["guardrails"] = {
            "n": len(g_texts), "pass_rate_production": float((g_prod == expected).mean()),
            "pass_rate_candidate": float((g_cand == expected).mean()),
            "failures": [{"text": t, "expected": e, "candidate": c, "note": n}
                         for t, e, c, n in zip(g_texts, expected, g_cand, guardrails["note"].fillna(""))
                         if c != e]}
    report["verdict"], report["reasons"] = verdict(report, cfg)
    return report


def verdict(report: dict, cfg: DriftConfig) -> tuple[str, list[str]]:
    reasons = []
    held = report["heldout"]
    if held["flip_rate"] > cfg.max_flip_rate:
        reasons.append(f"held-out flip rate {held['flip_rate']:.3f} > {cfg.max_flip_rate}")
    ref = report.get("reference")
    if ref and ref["flip_rate"] > cfg.max_flip_rate:
        reasons.append(f"recent-traffic flip rate {ref['flip_rate']:.3f} > {cfg.max_flip_rate}")
    for name, part in (("held-out", held), ("recent-traffic", ref)):
        if part and part["kl"] > cfg.max_kl:
            reasons.append(f"{name} KL divergence {part['kl']:.3f} > {cfg.max_kl}")
    if held["ece_change"] > cfg.max_ece_increase:
        reasons.append(f"calibration error rises by {held['ece_change']:.3f} > {cfg.max_ece_increase}")
    guard = report.get("guardrails")
    if guard:
        drop = guard["pass_rate_production"] - guard["pass_rate_candidate"]
        if drop > cfg.max_guardrail_drop:
            reasons.append(f"guardrail pass rate drops from {guard['pass_rate_production']:.0%} to "
                           f"{guard['pass_rate_candidate']:.0%} ({len(guard['failures'])} probes fail)")
    if reasons:
        return "fail", reasons
    return "pass", ["no drift past the configured thresholds"]
