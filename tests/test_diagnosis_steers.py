"""Diagnosis that acts (issue 28, point 1): the words Captum finds the model leaning on in its errors are the
words the counterfactual generator varies."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from core import cycle, diagnose
from core.setup import init_workspace
from tests.conftest import fast_config

THINGS = ["lamp", "chair", "desk", "sofa"]
# the held-out rows are worded apart from the seed, so what the generator writes from the seed is no copy of them
SEED_WORDS = (["I want to return the", "where is my", "please replace the", "the delivery of my", "I ordered a",
               "can you track the", "cancel the", "I need a new"], ["", "thanks", "asap please", "it is urgent"])
HELD_WORDS = (["hello, any news on the", "my order for the", "is it possible to swap the", "refund for the",
               "nobody delivered the", "status of the", "help with the", "wrong colour on the"],
              ["", "cheers", "from last week", "kind regards"])
SPURIOUS = "zebra"


def _rows(words, plant: dict[str, bool]) -> pd.DataFrame:
    """A text a class per opener; `plant`: the classes whose texts all carry the spurious word."""
    openers, closers = words
    rows = []
    for thing in THINGS:
        for k, opener in enumerate(openers):
            closer = closers[k % len(closers)]
            words = [opener, thing] + ([SPURIOUS] if plant.get(thing) else []) + ([closer] if closer else [])
            rows.append({"text": " ".join(words), "label": f"{thing}_order"})
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_a_planted_spurious_word_in_the_errors_is_the_word_the_counterfactuals_vary(tmp_path):
    # Every chair text of the seed says "zebra"; the held-out lamp texts say it too, so the model, which learned
    # "zebra" means chair, calls them chairs, and Captum finds it leaning on "zebra" in those errors.
    seed = _rows(SEED_WORDS, {"chair": True})
    held = _rows(HELD_WORDS, {"chair": True, "lamp": True})
    seed.to_csv(tmp_path / "seed.csv", index=False)
    held.to_csv(tmp_path / "held.csv", index=False)
    config = fast_config()
    config.curate.generators = ["counterfactual"]
    config.curate.counterfactual_per_pair = 12
    config.curate.difficulty_control = False  # not a test of the levels: the first 12 variants, whatever theirs
    config.data.selection_fraction = 0.5  # the diagnosis reads the selection rows: 4 a class
    config.train.epochs = 4
    ws = init_workspace(tmp_path / "ws", tmp_path / "seed.csv", None, tmp_path / "held.csv", config=config)
    assert cycle.run_cycle(ws, cycle.start_cycle(ws), progress=False).status == "done"

    evolved = cycle.evolve(ws, cycles=1, progress=False)[-1]
    findings = ws.store.diagnoses(evolved.cycle_id)
    leaned = diagnose.leaned_on(findings)
    assert leaned["lamp_order->chair_order"][0] == SPURIOUS, f"precondition: {leaned}"

    made = ws.store.samples(evolved.cycle_id)
    made = made[made["generator"] == "counterfactual"]  # one confused pair: all of them are its
    # at most counterfactual_per_pair, and the 8 chair texts that lose it and 8 lamp texts that gain it fill that
    assert len(made) == 12
    parents = ws.store.examples("seed").set_index("id")["text"]
    word = re.compile(rf"\b{SPURIOUS}\b")
    for row in made.itertuples():
        parent = parents[int(row.parent_id)]
        # exactly the spurious word changed (whatever the filters then decided): added to a lamp text (still
        # lamp), or taken from a chair text (still chair)
        assert bool(word.search(parent)) != bool(word.search(row.text)), (parent, row.text)
        assert word.sub("", parent).split() == word.sub("", row.text).split()
        assert row.label == ("chair_order" if word.search(parent) else "lamp_order")
    assert {"lamp_order", "chair_order"} == set(made["label"])
    notes = json.loads(ws.store.stage_runs(evolved.cycle_id).set_index("stage").loc["curate", "detail"])
    assert f"varied {SPURIOUS}" in json.dumps(notes)
    # and the Diagnosis page says so under the finding: what it made this cycle do
    from app.queries.diagnosis import finding_effects

    pair = findings[(findings["kind"] == "confusion_pair")
                    & (findings["subject"] == "lamp_order -> chair_order")].iloc[0]
    effects = finding_effects(pair["kind"], pair["subject"], json.loads(pair["detail"]), notes)
    assert any(e.startswith(f"the counterfactuals varied the words the model leaned on: {SPURIOUS}")
               for e in effects), effects
    assert any(e.startswith("asked for ") and f"counterfactual {len(made)})" in e for e in effects), effects


def test_a_planted_error_clusters_nearest_traffic_texts_are_asked_first(baseline_ws):
    """An error cluster of the diagnosis pulls the pool texts nearest it to the front of the label queue; the
    rest of the queue is still the views' disagreement."""
    from core import registry
    from core.curate import ask
    from core.curate.registry import Context

    store, cfg = baseline_ws.store, baseline_ws.config()
    cfg.curate.ask_near_clusters = 0.5
    pool = store.unlabeled_pool()
    loaded = registry.load_alias(baseline_ws, "production")
    seed = store.seed_examples()[["id", "text", "label"]]

    def context(clusters):
        return Context(loaded=loaded, seed=seed, pool=pool, pairs=[], favoured=set(), cfg=cfg.curate,
                       root=baseline_ws.root, clusters=clusters)

    plain = ask.choose(context([]), 6)
    # the planted cluster: two account-access complaints, worded apart from every pool text
    planted = ["i still cannot sign in to my account after the reset", "locked out of my login again, help"]
    steered = ask.choose(context([planted]), 6)
    ctx = context([planted])
    emb = ctx.encode(pool["text"].tolist())[0]
    centroid = ctx.encode(planted)[0].mean(0)
    nearest = pool["text"].to_numpy()[np.argsort(-(emb @ centroid), kind="stable")]
    assert steered["text"].tolist()[:3] == nearest[:3].tolist()
    assert steered["text"].tolist()[:3] != plain["text"].tolist()[:3]  # the cluster changed what comes first
    rest = steered["score"].to_numpy()[3:]  # then the views' disagreement, as without a cluster
    assert len(rest) == 3 and (np.diff(rest) <= 0).all()


def test_a_planted_error_clusters_nearest_traffic_texts_are_self_labeled_first(baseline_ws):
    """Where a class cap binds, the self-labels kept include the traffic texts nearest an error cluster of the
    diagnosis, before the better-verified rest."""
    from core import curate, registry
    from core.curate.registry import Context

    store = baseline_ws.store
    cfg = baseline_ws.config().curate.model_copy(update={
        "generators": ["self_label"], "max_per_class": 2, "favoured_class_factor": 1.0, "pseudo_labels": "weigh"})
    loaded = registry.load_alias(baseline_ws, "production")
    pool, seed = store.unlabeled_pool(), store.seed_examples()[["id", "text", "label"]]
    planted = ["i still cannot sign in to my account after the reset", "locked out of my login again, help"]

    def curated(clusters):
        ctx = Context(loaded=loaded, seed=seed, pool=pool, pairs=[], favoured=set(), cfg=cfg, root=baseline_ws.root,
                      clusters=clusters)
        return ctx, curate.curate(ctx, store.examples("heldout"), pd.DataFrame())[0]

    _, plain = curated([])
    ctx, steered = curated([planted])
    # the verified self-labels the caps chose among, and the two of them nearest the planted cluster
    capped = steered[(steered["status"] == "kept") | steered["reason"].str.startswith("over the class cap")]
    assert (capped["status"] != "kept").any(), "precondition: the caps bind"
    nearness = ctx.encode(capped["text"].tolist())[0] @ ctx.encode(planted)[0].mean(0)
    nearest = set(capped.assign(near=nearness).nlargest(2, "near")["text"])
    assert nearest <= set(steered.loc[steered["status"] == "kept", "text"])
    assert not nearest <= set(plain.loc[plain["status"] == "kept", "text"])  # the cluster changed what was kept
