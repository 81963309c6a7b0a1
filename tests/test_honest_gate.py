"""The honest gate: estimates from untouched rows with intervals, a forgetting guard that is a test, data-review
checks that can fail, and rejections that teach the next cycle."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from core import cycle, gates, model as M, registry, stats
from core.config import GateConfig, GatesConfig
from tests.conftest import fast_config


# -- the statistics -------------------------------------------------------------------------------------------
def _results(truth, predicted) -> pd.DataFrame:
    truth, predicted = np.asarray(truth, dtype=object), np.asarray(predicted, dtype=object)
    return pd.DataFrame({"example_id": np.arange(len(truth)), "label": truth, "predicted": predicted,
                         "correct": truth == predicted})


def _simulate(rng, classes=150, rows=4, production_acc=0.85, candidate_acc=0.89, keep=0.95, forget=None):
    """Gate rows of a many-class task. The candidate is better overall and, in truth, no worse on any class:
    every row's chances are the same whatever its class. `forget`: a class whose rows the candidate all sends
    to the next class, as a model trained on planted labels does."""
    truth = np.repeat(np.arange(classes), rows)
    prod_ok = rng.random(len(truth)) < production_acc
    rescue = (candidate_acc - production_acc * keep) / (1 - production_acc)
    cand_ok = np.where(prod_ok, rng.random(len(truth)) < keep, rng.random(len(truth)) < rescue)
    wrong = lambda: (truth + 1 + rng.integers(0, classes - 1, len(truth))) % classes  # noqa: E731
    prod, cand = np.where(prod_ok, truth, wrong()), np.where(cand_ok, truth, wrong())
    if forget is not None:
        cand = np.where(truth == forget, (forget + 1) % classes, cand)
    names = np.asarray([f"intent_{i:03d}" for i in range(classes)], dtype=object)
    return _results(names[truth], names[prod]), _results(names[truth], names[cand])


def test_chance_losses_on_150_classes_do_not_reject_a_better_candidate():
    """The issue's domain: 150 classes, a few gate rows each. Chance alone takes 2 rows of some class in most
    gates (which rejected every candidate before); the test must promote at least 95 of 100."""
    rng = np.random.default_rng(0)
    cfg = GatesConfig()
    rejected, chance_losses = 0, 0
    for _ in range(100):
        prod, cand = _simulate(rng)
        checks = gates.promotion_checks(cfg, cand, prod)
        rejected += not checks["passed"]
        lost = (prod["correct"] & ~cand["correct"]).groupby(prod["label"]).sum() \
            - (~prod["correct"] & cand["correct"]).groupby(prod["label"]).sum()
        chance_losses += bool((lost >= 2).any())
    assert chance_losses >= 50, "precondition: chance takes two rows of one class in most gates"
    assert rejected <= 5


def test_a_forgotten_class_among_150_is_found_with_its_evidence():
    rng = np.random.default_rng(1)
    found, false_alarms = 0, 0
    for _ in range(50):
        prod, cand = _simulate(rng, forget=7)
        checks = gates.promotion_checks(GatesConfig(), cand, prod)
        flagged = [f["label"] for f in checks["forgetting"]["flagged"]]
        false_alarms += len(set(flagged) - {"intent_007"})
        if "intent_007" in flagged:
            assert flagged[0] == "intent_007" and not checks["passed"]
            reason = next(r for r in checks["reasons"] if r.startswith("forgetting guard"))
            assert reason.startswith("forgetting guard: 'intent_007'")
            assert "(to 'intent_008' x" in reason  # where its answers went
            found += 1
    assert found >= 40  # power: production must have got most of the class's 4 rows right to break them
    assert false_alarms <= 2


def test_margin_interval_and_small_recall_drop():
    truth = ["a"] * 20 + ["b"] * 20
    prod = ["a"] * 18 + ["b"] * 2 + ["b"] * 14 + ["a"] * 6  # 80%
    better = ["a"] * 19 + ["b"] * 1 + ["b"] * 19 + ["a"] * 1  # 95%, 'a' loses nothing
    checks = gates.promotion_checks(GatesConfig(min_gain=0.01), _results(truth, better), _results(truth, prod))
    assert checks["passed"] and checks["gain"] == pytest.approx(0.15)
    cand = checks["candidate"]
    assert cand["n"] == 40 and cand["ci_low"] < 0.95 < cand["ci_high"] and cand["ci_high"] - cand["ci_low"] > 0.1
    assert checks["gain_detail"]["ci_low"] < 0.15 < checks["gain_detail"]["ci_high"]
    same = gates.promotion_checks(GatesConfig(min_gain=0.01), _results(truth, prod), _results(truth, prod))
    assert not same["passed"] and "does not beat the margin" in same["reasons"][0]


def test_a_gain_the_gate_rows_could_owe_to_chance_promotes_only_where_traffic_confirms_it():
    """Banking77, protocol split: 2 gate rows fixed and none broken of 308 (+0.65 points) promoted a version 0.2
    points worse on the dev test, and the next cycle did it again (2 fixed, 1 broken: 0.7 worse), while the probe's
    label-free gain read -0.25 and -0.03. At the shipped 90% such a gain, whose one-sided lower bound does not beat
    the margin, needs the probe's label-free gain to confirm it; the first cycle's 13 fixed and 1 broken (+3.9,
    2.7 better on the dev test) passes on its own; with no probe reading, or at 0.5, the point estimate decides."""
    truth = ["a"] * 308

    def pair(fixed, broken):
        prod = ["a"] * 250 + ["b"] * 58
        cand = ["b"] * broken + ["a"] * (250 - broken) + ["a"] * fixed + ["b"] * (58 - fixed)
        return _results(truth, cand), _results(truth, prod)

    against = {"label_free_gain": {"gain": -0.0025, "differ": 70, "n": 1000}}
    confirms = {"label_free_gain": {"gain": 0.004, "differ": 70, "n": 1000}}
    chance = gates.promotion_checks(GatesConfig(), *pair(2, 0), against)
    assert chance["gain"] > 0 and chance["decision_lower_bound"] < 0 and not chance["passed"]
    assert "could be chance" in chance["reasons"][0] and "-0.0025" in chance["reasons"][0]
    assert not gates.promotion_checks(GatesConfig(), *pair(2, 1), against)["passed"]
    assert gates.promotion_checks(GatesConfig(), *pair(2, 0), confirms)["passed"]
    clear = gates.promotion_checks(GatesConfig(), *pair(13, 1), against)
    assert clear["passed"] and clear["decision_lower_bound"] > 0.01
    assert gates.promotion_checks(GatesConfig(promotion_confidence=0.5), *pair(2, 0), against)["passed"]
    assert gates.promotion_checks(GatesConfig(), *pair(2, 0))["passed"]
    assert stats.lower_bound({"gain": 0.02, "ci_low": -0.01}, 0.5) == 0.02
    assert stats.lower_bound({"gain": 0.02, "ci_low": -0.01}, 0.975) == pytest.approx(-0.01)


def test_wilson_and_paired_gain_agree_with_known_values():
    low, high = stats.wilson(81, 100)
    assert (round(low, 4), round(high, 4)) == (0.7222, 0.8749)  # the textbook Wilson interval
    gain = stats.paired_gain([True] * 90 + [False] * 10, [True] * 85 + [False] * 5 + [True] * 10)
    assert gain["fixed"] == 10 and gain["broken"] == 5 and gain["gain"] == pytest.approx(0.05)
    assert gain["p_value"] == pytest.approx(0.3018, abs=1e-4)  # McNemar exact, 10 vs 5


# -- data review ----------------------------------------------------------------------------------------------
def _answers(rng, n, ease, noise=0.3):
    """n answers of a model whose confidence rises with a row's latent ease and which is right when the
    ease (plus noise) is positive: easier rows, more confident and more often right."""
    ease = rng.normal(ease, 1.0, n)
    return 1 / (1 + np.exp(-3 * ease)), ease + rng.normal(0, noise, n) > 0


@pytest.mark.slow
def test_the_traffic_estimate_covers_harder_traffic_where_the_gate_rows_miss_it():
    """Gate rows easier than traffic (the Banking77 case): their own accuracy reads ~5 points high and its
    interval misses traffic's accuracy nearly always; the estimate from the probe's confidences covers it."""
    rng = np.random.default_rng(3)
    misses = covers = 0
    for _ in range(20):
        gate_conf, gate_ok = _answers(rng, 300, 1.9)
        probe_conf, _ = _answers(rng, 500, 1.3)
        truth = _answers(rng, 50_000, 1.3)[1].mean()
        est = stats.label_free_rows(gate_conf, gate_ok, probe_conf, resamples=400)
        held = stats.estimate(gate_ok)
        misses += not held["ci_low"] <= truth <= held["ci_high"]
        covers += est["ci_low"] <= truth <= est["ci_high"]
        assert len(est["per_row"]) == 500 and est["ci_low"] <= est["accuracy"] <= est["ci_high"]
    assert misses >= 18 and covers >= 15, (misses, covers)
    with pytest.raises(ValueError, match="needs gate rows and probe rows"):
        stats.label_free_rows([0.9], [True], [])


def _graded(rng, n, low):
    """n answers whose confidence is uniform on [low, 1] and right with probability confidence + 0.06: a
    seed-only model, as sure of a row as it has reason to be, give or take a constant."""
    conf = rng.uniform(low, 1.0, n)
    return conf, rng.random(n) < np.minimum(conf + 0.06, 1.0)


def test_the_held_out_rows_ease_measured_on_the_seed_only_model_comes_off_every_version():
    """Held-out rows beside the seed (the near-seed domain): the seed-only model is sure of them and right on
    ~98%, unsure of traffic and right on ~76%. The gate rows' curve, flat near 1, reads traffic 4-19 points
    high; less the ease the seed-only model shows (its curve less its difference of confidences), its own
    estimate lands on its traffic accuracy, and a later version's estimate is its own curve less the same
    figure, so the versions keep their order."""
    rng = np.random.default_rng(7)
    errors, plain = [], []
    for _ in range(20):
        gate_conf, gate_ok = _graded(rng, 300, 0.85)
        probe_conf, _ = _graded(rng, 1000, 0.4)
        truth = float(np.minimum(rng.uniform(0.4, 1.0, 200_000) + 0.06, 1.0).mean())
        anchor = (gate_conf, gate_ok, probe_conf)
        est = stats.label_free_rows(gate_conf, gate_ok, probe_conf, resamples=50, anchor=anchor)
        plain.append(stats.label_free_rows(gate_conf, gate_ok, probe_conf, resamples=0)["accuracy"] - truth)
        errors.append(est["accuracy"] - truth)
        assert est["ci_low"] <= est["accuracy"] <= est["ci_high"]
        assert est["held_out_ease"] == pytest.approx(stats.held_out_ease(*anchor))
        later_conf, later_ok = _graded(rng, 300, 0.9)  # a later version, scored on the same rows
        later_probe = np.clip(probe_conf + 0.1, 0, 1)
        later = stats.label_free_rows(later_conf, later_ok, later_probe, resamples=0, anchor=anchor)
        alone = stats.label_free_rows(later_conf, later_ok, later_probe, resamples=0)
        assert later["accuracy"] == pytest.approx(alone["accuracy"] - est["held_out_ease"])
    print(f"plain {np.mean(plain):+.4f} [{min(plain):+.4f}, {max(plain):+.4f}]; less the ease {np.mean(errors):+.4f} "
          f"[{min(errors):+.4f}, {max(errors):+.4f}]")
    assert np.mean(plain) > 0.1 and min(plain) > 0.03, plain  # without the anchor: 4-19 points high
    assert abs(np.mean(errors)) < 0.015 and max(map(abs, errors)) < 0.05, errors  # seen: -0.8 [-4.5, +1.1]
    with pytest.raises(ValueError, match="anchor's rows"):
        stats.label_free_rows(gate_conf, gate_ok, probe_conf, anchor=(gate_conf[:5], gate_ok[:5], probe_conf))


def test_a_self_trained_version_reads_the_seed_only_model_where_the_two_answer_alike():
    """Self-training on traffic makes a version surer of traffic rows, right or wrong (the pseudo-labels it
    learned), while its gate rows, never trained on, stay as they were: its own curve read on its probe
    confidences then reads it high (Banking77 protocol: +2.0 to +3.4 points). Where it answers as the seed-only
    model does, the two are right or wrong together, so it takes that model's reading; only the rows where it
    answers differently read its own curve. The gain between two versions counts only the rows where they
    differ: equally right, one surer of the same answers, is no gain."""
    rng = np.random.default_rng(11)
    plain, errors = [], []
    for _ in range(20):
        gate_conf, gate_ok = _graded(rng, 300, 0.4)  # the seed-only model: as sure as it has reason to be
        probe_conf, probe_ok = _graded(rng, 1000, 0.4)

        def version(conf, ok, surer):
            """The self-trained version on the same rows: 8% answered differently (as sure as it has reason to
            be there), the rest answered alike, surer of them on the probe only."""
            changed = rng.random(len(conf)) < 0.08
            own_conf, own_ok = _graded(rng, len(conf), 0.3)
            return (np.where(changed, own_conf, np.sqrt(conf) if surer else conf), np.where(changed, own_ok, ok),
                    ~changed)

        later_gate_conf, later_gate_ok, _ = version(gate_conf, gate_ok, surer=False)
        later_probe, later_ok, agrees = version(probe_conf, probe_ok, surer=True)
        anchor = (gate_conf, gate_ok, probe_conf)
        est = stats.label_free_rows(later_gate_conf, later_gate_ok, later_probe, resamples=0, anchor=(*anchor, agrees))
        alone = stats.label_free_rows(later_gate_conf, later_gate_ok, later_probe, resamples=0, anchor=anchor)
        seed_only = stats.label_free_rows(*anchor, resamples=0, anchor=(*anchor, np.ones(1000, bool)))
        assert np.array_equal(est["per_row"][agrees], seed_only["per_row"][agrees])
        assert est["agrees_with_anchor"] == pytest.approx(agrees.mean())
        # each error beside the seed-only model's own (300 gate rows alone are a few points off either way)
        base = seed_only["accuracy"] - probe_ok.mean()
        plain.append(alone["accuracy"] - later_ok.mean() - base)
        errors.append(est["accuracy"] - later_ok.mean() - base)
    print(f"beside the seed-only model's error: own curve everywhere {np.mean(plain):+.4f}; the seed-only model's "
          f"reading where alike {np.mean(errors):+.4f} [{min(errors):+.4f}, {max(errors):+.4f}]")
    assert np.mean(plain) > 0.04 and min(plain) > 0.02, plain
    assert abs(np.mean(errors)) < 0.01 and max(map(abs, errors)) < 0.025, errors


def test_the_traffic_probe_is_drawn_once_and_kept_from_curation(tmp_path, tiny_csvs):
    from tests.conftest import make_workspace

    config = fast_config()
    config.data.probe_min_pool, config.data.probe_fraction, config.data.probe_max_rows = 20, 0.5, 15
    ws = make_workspace(tmp_path / "w", tiny_csvs, config)
    probe, pool = ws.store.traffic_probe(), ws.store.unlabeled_pool()
    assert len(probe) == 15 and len(pool) == 25 and set(probe["id"]).isdisjoint(pool["id"])
    assert set(probe["id"]) | set(pool["id"]) == set(ws.store.examples("unlabeled")["id"])
    again = make_workspace(tmp_path / "again", tiny_csvs, config).store.traffic_probe()
    assert again["text"].tolist() == probe["text"].tolist()  # seeded: the same rows every time
    config.data.probe_min_pool = 41  # the tiny pool has 40 rows: all of them stay with curation
    assert make_workspace(tmp_path / "small", tiny_csvs, config).store.traffic_probe().empty


def _samples(labels, generators, knn_top):
    return pd.DataFrame({"status": "kept", "label": labels, "generator": generators,
                         "scores": [json.dumps({"model": 0.9, "knn": 0.5, "knn_top": t}) for t in knn_top]})


def test_data_review_checks_can_fail_on_noise_class_mix_and_one_generator():
    seed = pd.Series(["a", "b", "c", "d"] * 5)
    gate = GateConfig(policy="auto_under_thresholds")
    clean = gates.data_review_checks(gate, _samples(["a", "b", "c", "d"] * 10, ["self_label"] * 40, [1.0] * 40), seed)
    assert clean["passed"] and clean["within_thresholds"] and clean["label_noise"] == 0.0
    noisy = gates.data_review_checks(gate, _samples(["a", "b", "c", "d"] * 10, ["self_label"] * 40,
                                                    [1.0] * 20 + [0.0] * 20), seed)
    assert not noisy["passed"] and "estimated label noise 50.0%" in noisy["reasons"][0]
    skewed = gates.data_review_checks(gate, _samples(["a"] * 40, ["self_label"] * 40, [1.0] * 40), seed)
    assert not skewed["passed"] and skewed["class_shift"] == pytest.approx(0.75)
    flood = gates.data_review_checks(gate, _samples(["a", "b", "c", "d"] * 10, ["templates"] * 36 + ["self_label"] * 4,
                                                    [1.0] * 40), seed)
    assert not flood["passed"] and "generator 'templates' wrote 90%" in flood["reasons"][0]
    # under auto_under_thresholds a failed data check waits for a person; under auto it rejects
    assert gates.automatic_verdict(gate, noisy, False, hard=False).action == "wait"
    assert gates.automatic_verdict(GateConfig(policy="auto"), noisy, False, hard=False).action == "reject"


# -- the held-out parts on a real workspace -------------------------------------------------------------------
@pytest.mark.slow
def test_heldout_parts_are_stratified_stored_and_kept_apart(baseline_ws):
    store = baseline_ws.store
    sel, gate = store.heldout("selection"), store.heldout("gate")
    held = store.examples("heldout")
    assert set(sel["id"]).isdisjoint(gate["id"]) and set(sel["id"]) | set(gate["id"]) == set(held["id"])
    # 4 held-out rows a class in the fixture: 1 for selection, 3 for the gate, every class in both
    assert sel["label"].value_counts().eq(1).all() and gate["label"].value_counts().eq(3).all()
    spec = json.loads((baseline_ws.checkpoints / "cycle_1" / "spec.json").read_text())
    assert set(pd.read_parquet(spec["eval_file"])["text"]) == set(sel["text"])  # checkpoints chosen on selection
    gate_eval = store.evaluation("v1", "gate")
    assert gate_eval["n"] == len(gate)
    outcome = cycle.evolve(baseline_ws, cycles=1, auto_approve=True, progress=False)[-1]
    # of the held-out rows, diagnosis read the selection part only (its other evidence, traffic and label answers,
    # has negative ids and is never a gate text)
    diagnosed = {i for d in store.diagnoses(outcome.cycle_id)["detail"] for i in json.loads(d).get("example_ids", [])}
    assert {i for i in diagnosed if i >= 0} and {i for i in diagnosed if i >= 0} <= set(sel["id"])
    emap = store.diagnosis_internals(outcome.cycle_id)["error_map"]
    assert not set(gate["text"]) & {t for t, src in zip(emap["text"], emap["source"]) if src != "selection"}
    checks = store.gate_for(outcome.cycle_id, "promotion")["checks"]
    assert checks["candidate"]["n"] == len(gate) and checks["rows"] == "gate"
    assert checks["candidate"]["ci_low"] <= checks["candidate_accuracy"] <= checks["candidate"]["ci_high"]


# -- a rejection's lesson is read off the selection rows ------------------------------------------------------
def _plant(rows: pd.DataFrame, broken: str = "", to: str = "") -> pd.DataFrame:
    """Results of a version that answers every row right except `broken`'s rows, which it sends to `to`."""
    predicted = rows["label"].where(rows["label"] != broken, to)
    return pd.DataFrame({"example_id": rows["id"], "predicted": predicted, "confidence": 0.9,
                         "correct": predicted == rows["label"]})


def test_a_forgetting_lesson_comes_from_the_selection_rows_not_the_gate_rows(tmp_path, tiny_csvs, monkeypatch):
    """The gate rows grade the next candidate, so what a promotion rejection teaches it is not read off them.
    Planted: the candidate forgets shipping_delay on the selection rows and account_access on the gate rows. The
    gate rejects for account_access; the lesson teaches shipping_delay, with selection rows as its evidence, and
    no gate row's result is read to make it. Where the selection rows show nothing forgotten, nothing is taught."""
    from datetime import timedelta

    from core.store import Store, utcnow
    from tests.conftest import DATA, LABELS, make_workspace

    held = pd.read_csv(DATA / "tickets_heldout.csv")
    held[held["label"].isin(LABELS)].groupby("label").head(6).to_csv(tmp_path / "held.csv", index=False)
    config = fast_config()
    config.data.selection_fraction = 0.5  # 3 selection and 3 gate rows a class: enough for the test on either
    ws = make_workspace(tmp_path / "ws", {**tiny_csvs, "heldout": tmp_path / "held.csv"}, config)
    store = ws.store
    parts = {part: store.heldout(part) for part in ("selection", "gate")}
    cycle_id = store.create_cycle("evolve", "gate", "v1", "test")
    for num, version in ((1, "v1"), (2, "v2")):
        store.register_version(version, num, cycle_id if version == "v2" else None, None, "base", f"models/{version}",
                               {}, {}, "test")
    store.save_evaluation("v1", {p: (_plant(rows), 1.0, {}) for p, rows in parts.items()})
    store.save_evaluation("v2", {
        "selection": (_plant(parts["selection"], "shipping_delay", "billing_question"), 0.75, {}),
        "gate": (_plant(parts["gate"], "account_access", "payment_processing_error"), 0.75, {})})
    checks = gates.promotion_checks(GatesConfig(), store.eval_results("v2", "gate"), store.eval_results("v1", "gate"))
    assert [f["label"] for f in checks["forgetting"]["flagged"]] == ["account_access"], "precondition"
    gate_id = store.open_gate(cycle_id, "promotion", "auto", checks, utcnow() + timedelta(days=1))
    store.decide_gate(gate_id, False, "auto", "checks failed", True)
    store.reject_cycle(cycle_id, "auto", "checks failed")

    read_parts: list = []
    eval_results = Store.eval_results
    monkeypatch.setattr(Store, "eval_results", lambda self, version, part=None: (
        read_parts.append(part), eval_results(self, version, part))[1])
    [lesson] = cycle.rejection_findings(store, "v1", None)
    assert lesson["subject"] == "shipping_delay" and "3 of 3 selection rows broken" in lesson["detail"]["reason"]
    assert read_parts and set(read_parts) == {"selection"}
    assert lesson["detail"]["remedy"] == {"hold_back": ["shipping_delay", "billing_question"],
                                          "upweight": ["shipping_delay"]}
    evidence = lesson["detail"]["evidence"]
    selection = parts["selection"]
    assert evidence["from"] == "selection rows"
    assert evidence["example_ids"] == sorted(selection.loc[selection["label"] == "shipping_delay", "id"])
    assert not set(evidence["example_ids"]) & set(parts["gate"]["id"])
    assert "account_access" not in json.dumps(lesson)  # nothing of the gate rows' verdict is taught

    store.save_evaluation("v2", {"selection": (_plant(selection), 1.0, {})})
    [lesson] = cycle.rejection_findings(store, "v1", None)
    assert lesson["subject"] == "forgetting" and lesson["detail"]["remedy"] == {}
    assert "the selection rows show none" in lesson["detail"]["reason"]


# -- many classes, real training: a planted forgotten class is rejected, the rejection teaches -----------------
COLOURS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple", "pink", "brown"]
THINGS = ["chair", "lamp", "table", "bottle", "jacket", "phone", "bicycle", "camera", "guitar", "kettle"]
OPENERS = ["I want to return the", "where is my", "please replace the", "the delivery of my", "question about the",
           "refund for the", "my order of the", "can you repair my", "I never got the", "I love the"]
CLOSERS = ["", "thanks", "asap please", "it is urgent", "from last week", "ordered online", "kind regards"]


def _many_class_rows(rng, per_class: int) -> pd.DataFrame:
    rows = []
    for colour in COLOURS:
        for thing in THINGS:
            for _ in range(per_class):
                text = f"{rng.choice(OPENERS)} {colour} {thing} {rng.choice(CLOSERS)}".strip()
                rows.append({"text": text, "label": f"{colour}_{thing}"})
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_many_classes_planted_forgetting_rejected_then_the_rejection_teaches(tmp_path):
    """100 classes, 8 held-out rows each (4 select, 4 grade). A templates file gives good rows for every class
    but, planted among them, red_lamp templates that describe red chairs, and the verifiers' bars are set to
    nothing: the candidate is better elsewhere but forgets red_chair, and the forgetting guard rejects it with
    the evidence. The next diagnosis ranks that rejection first with its action, found again on the selection
    rows (the gate rows will grade the next candidate, so they do not teach it); the next curation holds the
    planted rows back (sure verifiers only), the seed of red_chair is replayed, and its candidate, better
    in truth, is promoted."""
    from core.setup import init_workspace

    rng = np.random.default_rng(0)
    seed, held, truth = _many_class_rows(rng, 2), _many_class_rows(rng, 8), _many_class_rows(rng, 4)
    for name, frame in (("seed", seed), ("held", held)):
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
    config = fast_config()
    config.curate.generators = ["templates"]
    config.curate.min_confidence = config.curate.min_knn_agreement = config.curate.min_consistency = 0.0
    config.curate.templates_per_class, config.curate.max_per_class = 4, 6
    config.curate.perturbed_views = 0  # the bars are nothing: a consistency pass over 4,000 texts decides nothing
    # not a test of the difficulty mix: any level may fill the class's cap
    config.curate.difficulty_control = False
    # the kept set is all templates: the data review's generator-share and noise limits are not under test here
    config.gates.data_review.max_generator_share = config.gates.data_review.max_label_noise = 1.0
    config.diagnose.max_attributions, config.diagnose.correct_attributions = 4, 0
    config.diagnose.head_analysis, config.diagnose.max_clusters = False, 2
    # one pass over the data: the planted rows are learned and red_chair forgotten in it (2 passes: 62 s alone, 1: 55 s)
    config.train.epochs, config.train.batch_size = 1, 16
    config.train.checkpoint_every = 1000  # no kill here: a checkpoint every 2 steps cost 8 of its 120 s
    config.train.eval_every = 1000  # one evaluation, at the end: no early stop under test (10 cost 12 of its 84 s)
    config.data.selection_fraction = 0.5  # the lesson's forgetting test runs on the selection rows: 4 a class
    ws = init_workspace(tmp_path / "ws", tmp_path / "seed.csv", None, tmp_path / "held.csv", config=config)
    templates = {f"{c}_{t}": ["{opener} " + f"{c} {t}" + " {closer}"] for c in COLOURS for t in THINGS}
    del templates["red_chair"]
    templates["red_lamp"] = ["{opener} red chair {closer}"] * 4 + templates["red_lamp"]
    (ws.root / "templates.json").write_text(json.dumps({"templates": templates, "slots": {
        "opener": OPENERS, "closer": [c or "please" for c in CLOSERS]}}))
    first = cycle.run_cycle(ws, cycle.start_cycle(ws), progress=False)
    assert first.status == "done"
    store = ws.store
    assert store.heldout("gate")["label"].value_counts().eq(4).all()

    def truth_recall(version):
        loaded = registry.load(ws, version)
        pred = np.asarray(loaded.labels, dtype=object)[M.predict_proba(loaded, truth["text"].tolist()).argmax(1)]
        return (pd.Series(pred == truth["label"].to_numpy()).groupby(truth["label"].to_numpy()).mean())

    base = truth_recall("v1")
    assert base["red_chair"] >= 0.75, "precondition: the baseline knows red_chair"

    rejected = cycle.evolve(ws, cycles=1, progress=False)[-1]
    assert rejected.status == "rejected"
    kept = store.samples(rejected.cycle_id, status="kept")
    planted = set(kept[(kept["label"] == "red_lamp") & kept["text"].str.contains("red chair")]["text"])
    assert planted, "precondition: the planted templates were kept"
    gate = store.gate_for(rejected.cycle_id, "promotion")
    flagged = gate["checks"]["forgetting"]["flagged"]
    assert [f["label"] for f in flagged] == ["red_chair"] and "red_lamp" in flagged[0]["flipped_to"]
    assert "forgetting guard: 'red_chair'" in gate["comment"]
    assert truth_recall(store.cycle(rejected.cycle_id)["candidate_version"])["red_chair"] < 0.5  # it did forget

    taught = cycle.evolve(ws, cycles=1, progress=False)[-1]
    top = store.diagnoses(taught.cycle_id).iloc[0]
    assert top["kind"] == "gate_rejection" and top["subject"] == "red_chair"
    assert "hold back" in top["action"] and "'red_lamp'" in top["action"] and "replay the seed of 'red_chair'" in top["action"]
    evidence = json.loads(top["detail"])["evidence"]
    assert evidence["from"] == "selection rows" and set(evidence["example_ids"]) <= set(store.heldout("selection")["id"])
    samples = store.samples(taught.cycle_id)
    held_back = samples[(samples["label"] == "red_lamp") & samples["text"].str.contains("red chair")]
    assert len(held_back) and (held_back["status"] == "dropped").all()
    assert held_back["reason"].str.startswith("held back after a rejection").any()  # the rest fell to filters
    data = pd.read_parquet(ws.checkpoints / f"cycle_{taught.cycle_id}" / "train.parquet")
    assert not (data["text"].str.contains("red chair") & (data["label"] == "red_lamp")).any()
    assert (data["label"] == "red_chair").sum() == 3 * 2  # its seed replayed three times
    assert taught.status == "done", store.gate_for(taught.cycle_id, "promotion")["comment"]
    checks = store.gate_for(taught.cycle_id, "promotion")["checks"]
    assert not checks["forgetting"]["flagged"]
    after = truth_recall(store.alias("production"))
    assert after.mean() > base.mean() and after["red_chair"] >= base["red_chair"] - 0.25


def test_a_workspace_from_before_the_split_gets_stored_parts_and_its_old_config_loads(baseline_ws):
    """Schema v7 had no parts and config.toml carried keys this version retired: both upgrade in place."""
    import duckdb

    from core.config import ConfigError, parse_config
    from core.store import SCHEMA_VERSION, Store
    from core.workspace import open_workspace

    con = duckdb.connect(str(baseline_ws.db))
    for sql in ("DROP TABLE scaffold_retests", "DROP TABLE probe_predictions", "DROP TABLE traffic_designs",
                "DROP TABLE traffic_probe", "ALTER TABLE evaluations DROP COLUMN detail",
                "DROP TABLE label_requests", "DROP TABLE heldout_parts", "DROP TABLE auth_failures",
                "DROP TABLE api_tokens", "ALTER TABLE gates DROP COLUMN override",
                "ALTER TABLE cycles DROP COLUMN tries", "ALTER TABLE cycles DROP COLUMN progress_stage",
                "ALTER TABLE cycles DROP COLUMN progress", "ALTER TABLE cycles DROP COLUMN progress_at"):  # back to v7
        con.execute(sql)
    con.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    con.close()
    Store._migrated.clear()
    store = baseline_ws.store
    assert store.schema_version() == SCHEMA_VERSION
    parts = [store.heldout(p) for p in ("selection", "gate")]
    assert sum(len(p) for p in parts) == len(store.examples("heldout")) and all(len(p) for p in parts)
    text = baseline_ws.config_path.read_text()
    baseline_ws.config_path.write_text(text.replace("[gates]\n", "[gates]\nforgetting_min_examples = 2\n")
                                       .replace("[gates.promotion]\n", "[gates.promotion]\nauto_min_confidence = 0.5\n"))
    assert open_workspace(baseline_ws.root).config().gates.forgetting_alpha == 0.05
    with pytest.raises(ConfigError, match="unknown config key 'gates.forgetting_min_example'"):
        parse_config({"gates": {"forgetting_min_example": 2}})
