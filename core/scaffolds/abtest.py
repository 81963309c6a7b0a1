"""Paired statistics for an A/B test of two scaffolds on the same examples, and the adoption checks.

Both scaffolds answer the same held-out texts, so the test is paired: McNemar's exact test on the
discordant pairs (only one of the two right), or a paired bootstrap confidence interval of the accuracy
difference. A candidate is adopted only when it is better at the configured significance and does not
lower the guardrail pass rate; the checks are what the scaffold_adoption gate shows and decides on.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import binomtest

from core import stats


def mcnemar(production: np.ndarray, candidate: np.ndarray) -> dict:
    """Exact two-sided McNemar test: under no difference each discordant pair goes either way with p=1/2."""
    production, candidate = np.asarray(production, bool), np.asarray(candidate, bool)
    wins = int((candidate & ~production).sum())  # only the candidate right
    losses = int((production & ~candidate).sum())  # only production right
    p = binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0
    return {"candidate_only": wins, "production_only": losses, "p_value": float(p)}


def paired_bootstrap(production: np.ndarray, candidate: np.ndarray, iterations: int, alpha: float,
                     seed: int = 0) -> dict:
    """Accuracy difference (candidate - production) and its (1 - alpha) percentile interval, resampling
    examples with both answers kept together."""
    diff = np.asarray(candidate, float) - np.asarray(production, float)
    if not len(diff):
        return {"difference": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(iterations, len(diff)))].mean(1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return {"difference": float(diff.mean()), "ci_low": float(low), "ci_high": float(high)}


def wilson(correct: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of one accuracy (for showing a scaffold's accuracy with its uncertainty)."""
    correct = np.asarray(correct, bool)
    return stats.wilson(int(correct.sum()), len(correct), 1 - alpha)


def adoption_checks(production: np.ndarray, candidate: np.ndarray, guard_production: float | None,
                    guard_candidate: float | None, test: str, alpha: float, iterations: int,
                    auto_min_gain: float, seed: int = 0) -> dict:
    """The scaffold_adoption gate's checks: passed only for a significant gain that keeps every guardrail."""
    stat = mcnemar(production, candidate)
    boot = paired_bootstrap(production, candidate, iterations, alpha, seed)
    gain = boot["difference"]
    if test == "mcnemar":
        significant = gain > 0 and stat["p_value"] < alpha
        evidence = (f"McNemar p={stat['p_value']:.4f} ({stat['candidate_only']} only-candidate vs "
                    f"{stat['production_only']} only-production right)")
    else:
        significant = boot["ci_low"] > 0
        evidence = f"paired bootstrap {1 - alpha:.0%} CI [{boot['ci_low']:+.4f}, {boot['ci_high']:+.4f}]"
    reasons = []
    if not significant:
        reasons.append(f"accuracy {gain:+.4f} is not a significant gain at alpha={alpha:g}: {evidence}")
    guard_drop = None
    if guard_production is not None and guard_candidate is not None:
        guard_drop = guard_production - guard_candidate
        if guard_drop > 1e-12:
            reasons.append(f"guardrail pass rate drops from {guard_production:.0%} to {guard_candidate:.0%}")
    passed = not reasons
    if passed:
        reasons.append(f"accuracy {gain:+.4f}, {evidence}; guardrails "
                       + ("kept" if guard_drop is not None else "none defined"))
    return {"passed": passed, "within_thresholds": passed and gain >= auto_min_gain, "reasons": reasons,
            "test": test, "alpha": alpha, "n": int(len(production)), "gain": gain,
            "ci_low": boot["ci_low"], "ci_high": boot["ci_high"], "p_value": stat["p_value"],
            "candidate_only": stat["candidate_only"], "production_only": stat["production_only"],
            "guardrail_production": guard_production, "guardrail_candidate": guard_candidate}
