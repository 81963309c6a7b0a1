"""Scaffolds inside the loop (issue 28, point 3): every promotion re-tests the production scaffold against the
plain model on the new version; the daemon tries the plain model through the scaffold gate when it wins there,
and searches scaffolds in its window after its cycles."""
from __future__ import annotations

import json

import pytest

from core import actions, auth, cycle
from core.daemon import Daemon, plain_trial_due, settings
from core.scaffolds import archive, spec as S
from core.scaffolds.evaluate import trial_rows
from tests.conftest import APPROVER, PASSWORD

pytestmark = pytest.mark.slow


def _evolve_and_promote(ws) -> int:
    """One evolution cycle whose candidate a person promotes (the tiny data's candidate only ties its baseline,
    so its checks fail and the approver overrides them, with a reason); the cycle's id."""
    config = ws.config()
    config.gates.promotion.policy = "human"
    config.scaffolds.search_fraction = 0.0  # the fixture has 12 selection rows: the A/B part reads them all
    ws.save_config(config)
    if ws.store.user(APPROVER) is None:
        auth.add_user(ws.store, APPROVER, "approver", PASSWORD)
    waiting = cycle.evolve(ws, cycles=1, progress=False)[-1]
    assert waiting.status == "waiting", waiting.message
    actions.decide_gate(ws, auth.authenticate(ws.store, APPROVER, PASSWORD, "test"), waiting.gate_id, True,
                        "promoted for the scaffold re-test", override=True)
    assert cycle.resume(ws, progress=False).status == "done"
    return waiting.cycle_id


def _daemon_at_night(ws, **daemon):
    config = ws.config()
    for key, value in daemon.items():
        setattr(config.daemon, key, value)
    ws.save_config(config)
    return Daemon(ws, settings(ws.config().daemon, window="01:00-05:00", now="02:30"))


def test_a_promotion_retests_the_production_scaffold_and_the_daemon_tries_the_plain_model(scaffold_ws):
    ws, store = scaffold_ws, scaffold_ws.store
    # production answers nothing (every answer below confidence 1 goes to a person): the plain model must win
    blind, _ = archive.add(store, {"name": "blind", "steps": [{"type": "classify"},
                                                                {"type": "abstain", "threshold": 1.0}]}, "test")
    store.adopt_scaffold(blind, "test", "planted production")

    promoted = _evolve_and_promote(ws)
    assert store.alias("production") == "v2"
    ran = store.stage_runs(promoted).sort_values("started_at")["stage"].tolist()
    assert ran[-2:] == ["promote", "scaffold_retest"]
    retests = store.scaffold_retests()
    assert retests["cycle_id"].tolist() == [promoted]
    row = retests.iloc[0]
    assert row["model_version"] == "v2" and row["production_id"] == blind
    result = json.loads(row["result"])
    selection = trial_rows(store, ws.config().scaffolds, promoted)[1]
    assert result["checks"]["n"] == len(selection) == len(store.heldout("selection")) == 12
    assert result["production"]["accuracy"] == 0.0 and result["candidate"]["accuracy"] >= 8 / 12
    assert result["plain_better"] is True and result["checks"]["model_version"] == "v2"
    assert archive.production_id(store) == blind  # the re-test adopts nothing

    assert plain_trial_due(store) == {"cycle_id": promoted, "production_id": blind}
    message, _ = _daemon_at_night(ws).step()
    trial = store.scaffold_trials().iloc[-1]
    assert trial["candidate_id"] == S.DEFAULT and trial["production_id"] == blind and trial["status"] == "done"
    gate = store.gate_for(int(trial["cycle_id"]), "scaffold_adoption")
    assert gate["status"] == "approved"
    assert archive.production_id(store) == S.DEFAULT and plain_trial_due(store) is None


def test_every_promotion_is_retested_and_the_daemon_searches_in_its_window(weak_baseline_ws):
    ws, store = weak_baseline_ws, weak_baseline_ws.store
    config = ws.config()
    config.gates.max_recall_drop = 1.0  # the weak baseline's candidate truly beats it: promoted by its checks
    config.scaffolds.budget = 2
    ws.save_config(config)
    daemon = _daemon_at_night(ws, cycles_per_night=1, scaffold_searches_per_night=1)

    daemon.step()  # tonight's model cycle
    promoted = store.cycles().iloc[-1]
    assert promoted["kind"] == "evolve" and promoted["status"] == "done"
    retest = store.scaffold_retests().iloc[-1]
    assert retest["cycle_id"] == promoted["id"] and retest["production_id"] == S.DEFAULT
    assert json.loads(retest["result"]) == {"plain_better": False, "model_version": retest["model_version"],
                                            "scaffold": S.DEFAULT,
                                            "skipped": "the production scaffold is the plain model"}
    assert plain_trial_due(store) is None

    daemon.step()  # then a scaffold search, through its gate
    searched = store.cycles().iloc[-1]
    assert searched["kind"] == "scaffold" and searched["status"] in ("done", "rejected")
    assert "scaffold_search" in store.stage_runs(int(searched["id"]))["stage"].tolist()
    assert store.gate_for(int(searched["id"]), "scaffold_adoption") is not None

    message, again = daemon.step()
    assert message.startswith("done for tonight (1 cycle(s), 1 scaffold search(es) in window 01:00-05:00)")
    assert not again and len(store.cycles()) == int(searched["id"])
