"""kill -9 at any moment, then `resume`: the cycle finishes with nothing lost and nothing duplicated."""
import os
import signal
import time

import pytest

from tests.conftest import run_cli
from tests.engine_process import EngineProcess


def _evolve_process(ws, env=None):
    return EngineProcess("evolve", "--workspace", str(ws.root), "--quiet", env=env)


def _assert_consistent(ws, cid):
    store = ws.store
    c = store.cycle(cid)
    assert c["status"] in ("done", "rejected"), c
    samples = store.samples(cid)
    assert samples["id"].is_unique
    assert (samples["generator"] == "self_label").sum() == len(store.unlabeled_pool())  # once each
    versions = store.versions()
    assert versions["version"].is_unique and len(versions) == 2  # baseline + exactly one candidate
    assert sorted(p.name for p in ws.models.iterdir()) == ["v1", "v2"]  # no orphan folders
    metrics = store.metrics(f"cycle_{cid}")
    assert not metrics.duplicated(["step", "name"]).any()
    gates = store.gates()
    assert gates.loc[gates["cycle_id"] == cid, "kind"].is_unique  # no gate opened twice
    chain = store.audit_entries()
    assert chain["seq"].is_unique and (chain["action"] == "version_registered").sum() == 2


@pytest.mark.slow
def test_sigkill_inside_training_then_resume(baseline_ws):
    config = baseline_ws.config()
    config.train.max_steps = 30  # long enough to be killed between checkpoints (the first comes at step 5)
    config.train.checkpoint_every = 5
    config.doctor.enabled = False  # an early stop would make the step count below depend on the data
    baseline_ws.save_config(config)
    proc = _evolve_process(baseline_ws)
    ckpts = baseline_ws.checkpoints / "cycle_2" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not list(ckpts.glob("step_*")):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = baseline_ws.store
    cycle = store.open_cycle()
    assert cycle["stage"] == "train" and store.version("v2") is None
    resumed_from = min(int(p.name.split("_")[1]) for p in ckpts.glob("step_*"))
    assert resumed_from > 0
    result = run_cli("resume", "--workspace", str(baseline_ws.root), "--quiet", check=True)
    assert "cycle 2" in result.stdout
    _assert_consistent(baseline_ws, cycle["id"])
    assert store.version("v2")["lineage"]["steps"] == 30


@pytest.mark.slow
def test_sigkill_inside_promotion_then_resume(weak_baseline_ws):
    config = weak_baseline_ws.config()
    config.gates.max_recall_drop = 1.0  # the candidate must reach promotion (its checks pass: it beats v1)
    weak_baseline_ws.save_config(config)
    proc = _evolve_process(weak_baseline_ws, {"EVOLAB_FAULT": "promote_before_commit"})
    proc.wait(timeout=600)
    assert proc.returncode == -signal.SIGKILL
    store = weak_baseline_ws.store
    assert store.alias("production") == "v1"  # the killed transaction left nothing behind
    cycle = store.open_cycle()
    assert cycle["stage"] == "promote"
    run_cli("resume", "--workspace", str(weak_baseline_ws.root), "--quiet", check=True)
    assert store.alias("production") == "v2"
    _assert_consistent(weak_baseline_ws, cycle["id"])
    assert (store.audit_entries()["action"] == "promoted").sum() == 2  # baseline + this one, once


@pytest.mark.slow
def test_sigkill_between_training_and_registration(baseline_ws):
    proc = _evolve_process(baseline_ws, {"EVOLAB_FAULT": "train_before_register"})
    proc.wait(timeout=600)
    assert proc.returncode == -signal.SIGKILL
    assert (baseline_ws.models / "v2").exists() and baseline_ws.store.version("v2") is None
    run_cli("resume", "--workspace", str(baseline_ws.root), "--quiet", check=True)
    _assert_consistent(baseline_ws, 2)
