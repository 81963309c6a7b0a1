"""The gate's statistics, in one place for the gates, the benchmarks and the dashboard.

- `estimate`: an accuracy with its Wilson score interval (sound at small n and near 0 or 1);
- `paired_gain`: the accuracy difference of two models on the same rows, with an Agresti-Min interval
  and McNemar's exact p-value (only the discordant rows carry information);
- `label_free_rows`: accuracy on traffic from the gate rows' accuracy by confidence read on the traffic probe,
  less how much easier the gate rows are than traffic for the seed-only model (`held_out_ease`), with a
  bootstrap interval over both; `sampled_gain` and `assisted_accuracy`: the same with people's labels of
  probe rows drawn where they decide (core/traffic.py);
- `forgetting_test`: per class, are production's correct answers broken more often than in the other
  classes? A one-sided Fisher exact test on each class, Holm-corrected over the classes tested, so a
  150-class gate does not reject whenever chance takes 2 of one class's 5 rows.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import binomtest, fisher_exact, norm

LEVEL = 0.95  # every interval a gate shows
EDGE_ROWS = 10  # the fewest rows the confidence curve's two ends rest on (isotonic_read)
# assisted_accuracy: traffic labels set a version's level only where the correction's expected noise is at most a point
MAX_LEVEL_SD = 0.01


def _z(level: float) -> float:
    return float(norm.ppf(0.5 + level / 2))


def wilson(hits: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    if not n:
        return 0.0, 1.0
    z, p = _z(level), hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def estimate(correct, level: float = LEVEL) -> dict:
    """Accuracy of boolean `correct` with its interval: what a gate shows for a model."""
    correct = np.asarray(correct, bool)
    return estimate_counts(int(correct.sum()), len(correct), level)


def estimate_counts(hits: int, n: int, level: float = LEVEL) -> dict:
    low, high = wilson(hits, n, level)
    return {"accuracy": hits / n if n else 0.0, "n": int(n), "ci_low": low, "ci_high": high, "level": level}


def stored_estimate(evaluation: dict | None, level: float = LEVEL) -> dict | None:
    """The estimate of a stored evaluation row (accuracy, n)."""
    if not evaluation or not evaluation.get("n"):
        return None
    return estimate_counts(int(round(evaluation["accuracy"] * evaluation["n"])), int(evaluation["n"]), level)


def shown_estimate(accuracy, n, traffic=None) -> dict | None:
    """The estimate people are shown for one version: on traffic where it has that estimate (`traffic`, the
    stored detail, JSON or a dict), else on its gate rows (accuracy, n); `basis` says which."""
    import json

    if isinstance(traffic, str) and traffic:
        traffic = json.loads(traffic)
    if isinstance(traffic, dict) and traffic:
        return {**traffic, "basis": "traffic"}
    if accuracy is None or n is None or accuracy != accuracy or n != n:  # NULL or NaN: not evaluated
        return None
    est = stored_estimate({"accuracy": float(accuracy), "n": int(n)})
    return {**est, "basis": "gate rows"} if est else None


def shown_estimates(evaluations) -> dict[str, dict]:
    """Per version, shown_estimate from the store's evaluation rows (version, split, accuracy, n, detail)."""
    rows = evaluations.to_dict("records") if hasattr(evaluations, "to_dict") else list(evaluations)
    gate = {r["version"]: r for r in rows if r["split"] == "gate"}
    traffic = {r["version"]: r.get("detail") for r in rows if r["split"] == "traffic"}
    out = {}
    for version in {**gate, **traffic}:
        row = gate.get(version, {})
        if (est := shown_estimate(row.get("accuracy"), row.get("n"), traffic.get(version))) is not None:
            out[version] = est
    return out


def paired_gain(production, candidate, level: float = LEVEL) -> dict:
    """candidate - production accuracy on the same rows. Agresti-Min adds half a row to each discordant
    cell, which keeps the interval honest when few rows differ."""
    production, candidate = np.asarray(production, bool), np.asarray(candidate, bool)
    n = len(production)
    fixed = int((candidate & ~production).sum())
    broken = int((production & ~candidate).sum())
    gain = (fixed - broken) / n if n else 0.0
    f, b, m = fixed + 0.5, broken + 0.5, n + 2
    centre = (f - b) / m
    half = _z(level) * math.sqrt(max(f + b - (f - b) ** 2 / m, 0.0)) / m
    p = binomtest(fixed, fixed + broken, 0.5).pvalue if fixed + broken else 1.0
    return {"gain": gain, "ci_low": max(-1.0, centre - half), "ci_high": min(1.0, centre + half),
            "fixed": fixed, "broken": broken, "n": n, "p_value": float(p), "level": level}


def lower_bound(gain: dict, confidence: float) -> float:
    """A gain's one-sided lower bound at `confidence`, from its interval at LEVEL (the half-width below the
    estimate scaled by the ratio of the two normal quantiles); the estimate itself at 0.5."""
    scale = _z(2 * confidence - 1) / _z(LEVEL)
    return float(gain["gain"] - scale * max(gain["gain"] - gain["ci_low"], 0.0))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: controls the chance of any false alarm across all the tests."""
    order = np.argsort(p_values)
    adjusted = np.empty(len(p_values))
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted.tolist()


def forgetting_test(truth, production_pred, candidate_pred, alpha: float, max_drop: float,
                    shown: int = 5) -> dict:
    """Which classes did the candidate forget?

    Among the rows production got right, a class is forgotten when (1) the candidate breaks a larger
    share of them than in the rest of the classes, at Holm-adjusted significance alpha (one-sided Fisher
    exact test per class), and (2) its recall really falls by more than max_drop (fixed rows count
    against broken ones). `flagged` are the forgotten classes; `closest` the most suspicious of all, with
    their evidence, so a person sees how near the guard came."""
    truth = np.asarray(truth, dtype=object)
    prod_ok = np.asarray(production_pred, dtype=object) == truth
    cand_pred = np.asarray(candidate_pred, dtype=object)
    cand_ok = cand_pred == truth
    broken_rows = prod_ok & ~cand_ok
    total_right, total_broken = int(prod_ok.sum()), int(broken_rows.sum())
    rows = []
    for label in sorted(set(truth)):
        mine = truth == label
        right, broken = int((prod_ok & mine).sum()), int((broken_rows & mine).sum())
        fixed = int((~prod_ok & cand_ok & mine).sum())
        n = int(mine.sum())
        rest_right, rest_broken = total_right - right, total_broken - broken
        p = 1.0
        if broken:
            p = float(fisher_exact([[broken, right - broken], [rest_broken, rest_right - rest_broken]],
                                   alternative="greater")[1])
        flipped_to: dict[str, int] = {}
        for pred in cand_pred[broken_rows & mine]:
            flipped_to[str(pred)] = flipped_to.get(str(pred), 0) + 1
        rows.append({"label": str(label), "n": n, "production_right": right, "broken": broken, "fixed": fixed,
                     "recall_production": right / n, "recall_candidate": int((cand_ok & mine).sum()) / n,
                     "drop": (broken - fixed) / n, "p_value": p,
                     "flipped_to": dict(sorted(flipped_to.items(), key=lambda kv: -kv[1]))})
    tested = [r for r in rows if r["production_right"]]
    for r, adj in zip(tested, holm([r["p_value"] for r in tested])):
        r["p_adjusted"] = adj
    for r in rows:
        r.setdefault("p_adjusted", 1.0)
        r["forgotten"] = r["p_adjusted"] < alpha and r["drop"] > max_drop
    ranked = sorted(rows, key=lambda r: (r["p_adjusted"], r["p_value"], -r["drop"]))
    return {"test": "one-sided Fisher exact per class on production's correct rows, Holm-adjusted",
            "alpha": alpha, "max_recall_drop": max_drop, "classes_tested": len(tested),
            "production_right": total_right, "broken": total_broken,
            "flagged": [r for r in ranked if r["forgotten"]],
            "closest": [r for r in ranked if not r["forgotten"]][:shown]}


# -- labels from traffic: a cycle draws probe rows to label (core/traffic.py) -------------------------
def sampled_gain(z_known, z_drawn, unlabeled: int, n: int, level: float = LEVEL) -> dict:
    """candidate - production accuracy on the n probe rows, from labels drawn where the two disagree.

    Where the two models agree they are both right or both wrong, so only the disagreement rows carry the
    gain: z = correct(candidate) - correct(production) is -1, 0 or 1 there. z_known: the disagreement rows
    labeled before this cycle's draw (each counts once); z_drawn: those drawn at random, without replacement,
    from the `unlabeled` others, and answered (each stands for unlabeled / len(z_drawn) rows, the
    Horvitz-Thompson weight of a simple random sample). The variance adds the draw's (finite-population
    corrected) to the probe's own as a sample of traffic."""
    z_known, z_drawn = np.asarray(z_known, float), np.asarray(z_drawn, float)
    m = len(z_drawn)
    if unlabeled and not m:
        raise ValueError("unlabeled disagreement rows remain and none of them was labeled")
    weight = unlabeled / m if m else 0.0
    total = z_known.sum() + weight * z_drawn.sum()
    gain = total / n
    second = (np.square(z_known).sum() + weight * np.square(z_drawn).sum()) / n  # E[z^2] over the probe
    var_probe = max(second - gain ** 2, 0.0) / n
    spread = z_drawn.var(ddof=1) if m > 1 else 1.0  # one draw says nothing of the spread: assume the widest
    var_draw = (unlabeled ** 2) * (1 - m / unlabeled) * spread / m / n ** 2 if unlabeled else 0.0
    half = _z(level) * math.sqrt(var_probe + var_draw)
    return {"gain": float(gain), "ci_low": float(max(-1.0, gain - half)), "ci_high": float(min(1.0, gain + half)),
            "n": int(n), "labeled": int(len(z_known) + m), "known": int(len(z_known)), "drawn": int(m),
            "disagreements": int(len(z_known) + unlabeled), "level": level,
            "method": "disagreement rows labeled, Horvitz-Thompson"}


def _level(s: np.ndarray, pi: np.ndarray, at: np.ndarray, c: np.ndarray) -> dict:
    """The difference estimator of one version's accuracy (its per-row readings s over the probe, corrected by the
    labeled rows' residuals weighted by 1/pi), its draw variance, and the noise its correction is expected to have,
    known from the design before any answer: sqrt(sum over rows of (1 - pi) / pi * s(1 - s)) / n, infinite where
    some row could never be drawn."""
    n = len(s)
    residual = c - s[at]
    drawable = pi > 0
    expected = (math.sqrt(float(np.sum((1 - pi[drawable]) / pi[drawable] * s[drawable] * (1 - s[drawable])))) / n
                if drawable.all() else math.inf)
    return {"value": float(s.mean() + (residual / pi[at]).sum() / n), "label_free": float(s.mean()),
            "var": float((((1 - pi[at]) / pi[at] ** 2) * residual ** 2).sum()) / n ** 2, "expected_sd": expected}


def assisted_accuracy(predicted_correct, pi, labeled, labeled_correct, level: float = LEVEL,
                      anchor: tuple | None = None, label_free_half: float = 0.0) -> dict:
    """A version's accuracy on the probe from its label-free per-row readings and the traffic labels: predicted_correct
    and pi (each row's probability of having been labeled by now), every probe row's; labeled: the labeled rows'
    positions; labeled_correct: whether the version is right there.

    The level: the difference estimator (the readings' mean corrected by the labeled rows' residuals, each weighted by
    1/pi: unbiased whatever the readings are worth) where its expected noise is at most MAX_LEVEL_SD; elsewhere the
    label-free reading stands, and its interval (label_free_half) widens the one shown. A level needs labels
    everywhere: at 40 labels a cycle on a 1,000-row probe the rows where the versions agree are labeled at 1 in 8 to
    1 in 180 and the correction's noise was 1.9 and 2.6 points after five cycles, the same few rows moving every
    version together (Banking77, both setups: every version within 2 points of the dev test in 34-38% of redrawn
    draws; with the level label-free and the gaps labeled, 99% and 85%).

    anchor: the seed-only version's (predicted_correct, labeled_correct), row for row. A version then reads the
    anchor's level plus its own gap to the anchor, the difference estimator of that gap: on the rows where the two
    answer alike they are right or wrong together and read alike, so only the rows where they differ, the ones its
    cycles' draws labeled first, move it; what every version shares cancels. `unbiased`: the version's plain
    difference estimator over every labeled row."""
    s, pi = np.asarray(predicted_correct, float), np.asarray(pi, float)
    at, c = np.asarray(labeled, int), np.asarray(labeled_correct, float)
    n = len(s)
    own = _level(s, pi, at, c)
    gap, gap_var, base = 0.0, 0.0, own
    if anchor is not None:
        a_read, a_correct = np.asarray(anchor[0], float), np.asarray(anchor[1], float)
        base = _level(a_read, pi, at, a_correct)
        gap = own["value"] - base["value"]
        d = (c - a_correct) - (s[at] - a_read[at])  # the gap's residuals: zero where the two agree
        gap_var = float((((1 - pi[at]) / pi[at] ** 2) * d ** 2).sum()) / n ** 2
    labeled_level = base["expected_sd"] <= MAX_LEVEL_SD
    value = (base["value"] if labeled_level else base["label_free"]) + gap
    value_c = min(max(value, 0.0), 1.0)
    half = _z(level) * math.sqrt(value_c * (1 - value_c) / n + gap_var + (base["var"] if labeled_level else 0.0))
    if not labeled_level:
        half = math.hypot(half, label_free_half)
    return {"accuracy": value_c, "ci_low": max(0.0, value - half), "ci_high": min(1.0, value + half),
            "n": int(n), "labeled": int(len(c)), "label_free": float(s.mean()),
            "unbiased": min(max(own["value"], 0.0), 1.0), "level_from": "traffic labels" if labeled_level else
            "label-free", "level_sd": base["expected_sd"] if math.isfinite(base["expected_sd"]) else None,
            "gap_to_anchor": gap if anchor is not None else None,
            "level": level}


def isotonic_read(x: np.ndarray, y: np.ndarray, at: np.ndarray) -> np.ndarray:
    """y against x fitted non-decreasing within [0, 1], read at `at` (clipped to x's range): what sklearn's
    IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip") fits and predicts, without its checks, which
    cost more than the fit in a 400-draw bootstrap, except that the lowest and the highest EDGE_ROWS rows
    enter as their mean. Traffic reaches below the gate rows' confidences, where the curve is read flat at its
    lowest block: left alone, one wrong row at the bottom read most of a probe as wrong (seen in simulation:
    a model right on 76% of traffic read at 27%)."""
    from sklearn.isotonic import isotonic_regression

    order = np.argsort(x, kind="stable")
    x, y = np.asarray(x, float)[order], np.asarray(y, float)[order].copy()
    edge = min(EDGE_ROWS, len(y) // 2)
    if edge:
        y[:edge], y[len(y) - edge:] = y[:edge].mean(), y[len(y) - edge:].mean()
    xs, where, counts = np.unique(x, return_inverse=True, return_counts=True)  # ties: their mean, weighed
    fitted = isotonic_regression(np.bincount(where, weights=y) / counts, sample_weight=counts, y_min=0.0, y_max=1.0)
    return np.interp(at, xs, fitted)


def held_out_ease(gate_confidence, gate_correct, probe_confidence, read: np.ndarray | None = None) -> float:
    """How much easier the gate rows are than traffic, read on a model that learned from the seed alone: its
    gate rows' accuracy-by-confidence curve read on the probe, less its difference of confidences (gate
    accuracy less the fall in mean confidence from the gate rows to the probe; Guillory et al. 2021). A model
    that never saw traffic is no surer of traffic than it has reason to be, so its confidence falls as far as its
    accuracy; the curve, fitted where the rows are easy, does not fall (near-seed held-out rows on Banking77:
    99% right at every confidence, the curve read 94.5% on traffic where the model is right on 83-85%).
    read: the curve already read on the probe, where the caller has it."""
    conf, correct = np.asarray(gate_confidence, float), np.asarray(gate_correct, float)
    probe = np.asarray(probe_confidence, float)
    curve = (isotonic_read(conf, correct, probe) if read is None else read).mean()
    return float(curve - (correct.mean() - (conf.mean() - probe.mean())))


def label_free_rows(gate_confidence, gate_correct, probe_confidence, level: float = LEVEL,
                    resamples: int = 400, seed: int = 0, anchor: tuple | None = None) -> dict:
    """Per probe row, how likely the version is right there, from nothing but labeled gate rows and confidences:
    correctness against confidence fitted on the gate rows (isotonic, so it only assumes that surer is likelier
    right), read at each probe row's confidence, less the held-out rows' ease over traffic (held_out_ease).

    anchor: the seed-only model's (gate confidence, gate correct, probe confidence, agrees), row for row the same
    gate and probe rows, agrees[i] true where the version answers probe row i as the seed-only model does. There
    the two are right or wrong together, so the version takes the seed-only model's reading: its own confidence
    says nothing there that the other's does not, and self-training inflates it on traffic (pseudo-labels it
    learned are answers it is surer of, right or wrong) while its gate rows, never trained on, stay honest. Only
    the rows where it answers differently read its own curve (without `agrees`, its own curve everywhere).
    Measured on Banking77: on the protocol split its own curve everywhere read the evolved versions +2.0 to +3.4
    points above their probe truth, this reading -0.8 to +0.8, the seed-only model +0.2; with held-out rows near
    the seed (99% right at every confidence, so the curves say little about the rows where versions differ) it
    reads them 1.1 to 2.0 below (their own curves: -0.5 to +0.1), within 1 point of the dev test either way.

    Its mean is the label-free estimate on traffic, with a percentile bootstrap interval that redraws the gate
    rows and the probe rows together (the anchor's with them). Traffic labels correct what is left
    (assisted_accuracy)."""
    conf, correct = np.asarray(gate_confidence, float), np.asarray(gate_correct, float)
    probe = np.asarray(probe_confidence, float)
    if not len(conf) or not len(probe):
        raise ValueError("a traffic estimate needs gate rows and probe rows")
    if anchor is not None:
        a_conf, a_correct, a_probe = (np.asarray(a, float) for a in anchor[:3])
        agrees = np.asarray(anchor[3], bool) if len(anchor) > 3 else np.zeros(len(probe), bool)
        if len(a_conf) != len(conf) or len(a_probe) != len(probe) or len(agrees) != len(probe):
            raise ValueError("the anchor's rows are not the version's gate and probe rows")

    def reading(g, p):
        own = isotonic_read(conf[g], correct[g], probe[p])
        if anchor is None:
            return own, 0.0
        seed_only = isotonic_read(a_conf[g], a_correct[g], a_probe[p])
        ease = held_out_ease(a_conf[g], a_correct[g], a_probe[p], seed_only)
        return np.where(agrees[p], seed_only, own) - ease, ease

    per_row, shift = reading(np.arange(len(conf)), np.arange(len(probe)))
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for b in range(resamples):
        g, p = rng.integers(0, len(conf), len(conf)), rng.integers(0, len(probe), len(probe))
        draws[b] = reading(g, p)[0].mean()
    value = float(np.clip(per_row.mean(), 0.0, 1.0))
    low, high = np.clip(np.quantile(draws, [(1 - level) / 2, (1 + level) / 2]), 0, 1) if resamples else (value, value)
    method = "gate rows' accuracy by confidence, read on the probe"
    if anchor is not None:
        method += (f" (the seed-only model's where the two answer alike, {100 * np.mean(agrees):.0f}% of it), less "
                   f"the held-out rows' ease over traffic ({100 * shift:+.1f} points)")
    return {"per_row": per_row, "accuracy": value, "ci_low": float(min(low, value)),
            "ci_high": float(max(high, value)), "held_out_ease": shift if anchor is not None else None,
            "agrees_with_anchor": float(np.mean(agrees)) if anchor is not None else None, "method": method}
