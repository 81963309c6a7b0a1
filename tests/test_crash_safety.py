"""Crash safety and failure handling of the engine (issue 15): each test is a hole the previous version left."""
from __future__ import annotations

import ast
import inspect
import os
from pathlib import Path

import pytest

import core.flow
from core import actions, auth, cycle, model as M
from core.cli import main
from core.scaffolds import stages as scaffold_stages
from core.store import StoreConflict
from core.workspace import engine_lock
from tests.conftest import APPROVER, PASSWORD, VIEWER, VIEWER_PASSWORD, run_cli


def _cli(monkeypatch, capsys, *args, password: str = PASSWORD):
    monkeypatch.setenv("EVOLAB_PASSWORD", password)
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


# -- every file the engine writes is whole or absent ------------------------------------------------------------
def test_engine_files_are_fsynced_then_renamed_into_place(workspace, monkeypatch):
    """Each file of a trained version, its checkpoints, result.json, best.safetensors and config.toml reached its
    name by a rename of a temporary file whose data was fsynced first."""
    fsynced, renames = set(), []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd):
        fsynced.add(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    def replace(src, dst, *a, **k):
        renames.append((Path(src).resolve(), Path(dst).resolve()))
        return real_replace(src, dst, *a, **k)

    def rename(src, dst, *a, **k):
        renames.append((Path(src).resolve(), Path(dst).resolve()))
        return real_rename(src, dst, *a, **k)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    config = workspace.config()
    config.train.checkpoint_every = 1
    workspace.save_config(config)
    assert cycle.run_cycle(workspace, cycle.start_cycle(workspace), progress=False).status == "done"

    ckpts = workspace.checkpoints / "cycle_1" / "checkpoints"
    written = [workspace.config_path, ckpts / "result.json", ckpts / "best.safetensors",
               *sorted((workspace.models / "v1").rglob("*")), *sorted(ckpts.glob("step_*/*"))]
    written = [p.resolve() for p in written if p.is_file()]
    assert any("step_" in str(p) for p in written) and any("adapter" in str(p) for p in written)

    def arrived_whole(path: Path) -> bool:
        for src, dst in renames:
            if path == dst or dst in path.parents:
                return str(src / path.relative_to(dst)) in fsynced
        return False

    torn = [str(p.relative_to(workspace.root.resolve())) for p in written if not arrived_whole(p)]
    assert not torn, f"written in place, not fsynced and renamed: {torn}"


@pytest.mark.slow
def test_a_version_folder_is_written_once(baseline_ws, tmp_path):
    """save_version never replaces a folder; a stray folder under the next version's name is set aside (kept,
    audited), never deleted, and the registered version's files are its own."""
    with pytest.raises(FileExistsError):
        M.save_version(None, [], baseline_ws.config().model, baseline_ws.models / "v1")
    stray = baseline_ws.models / "v2"
    stray.mkdir()
    (stray / "notes.txt").write_text("an operator's copy, not a model")
    outcomes = cycle.evolve(baseline_ws, cycles=1, progress=False)
    assert outcomes[-1].status in ("done", "rejected")
    kept = list((baseline_ws.checkpoints / "cycle_2").glob("unregistered-v2-*/notes.txt"))
    assert len(kept) == 1 and kept[0].read_text() == "an operator's copy, not a model"
    row = baseline_ws.store.version("v2")
    M.verify_files(baseline_ws.models / "v2", row["files"], "v2")  # no stray file beside the weights
    audit = baseline_ws.store.audit_entries()
    assert (audit["action"] == "model_folder_set_aside").sum() == 1


# -- a stage that keeps failing ends its cycle instead of blocking the workspace ------------------------------------
def _max_tries(ws, n: int) -> None:
    config = ws.config()
    config.engine.max_stage_tries = n
    ws.save_config(config)


@pytest.mark.slow
def test_a_stage_that_keeps_raising_fails_its_cycle(baseline_ws):
    _max_tries(baseline_ws, 2)
    root = str(baseline_ws.root)
    fault = {"EVOLAB_FAULT": "raise:stage_start", "EVOLAB_FAULT_SKIP": "2"}  # the third stage: data_review
    first = run_cli("evolve", "--workspace", root, "--quiet", env=fault)
    assert first.returncode != 0 and "Traceback" not in first.stderr
    assert "fault injected at stage_start" in first.stderr.strip().splitlines()[-1]
    store = baseline_ws.store
    assert store.open_cycle()["stage"] == "data_review"

    second = run_cli("resume", "--workspace", root, "--quiet", env={**fault, "EVOLAB_FAULT_SKIP": "0"})
    assert second.returncode == 1, second.stderr
    assert "cycle 2 failed (stage data_review failed 2 times; last error: data_review: InjectedFault" \
        in second.stdout
    c = store.cycle(2)
    assert c["status"] == "failed" and c["stage"] == "data_review" and c["finished_at"] is not None
    assert store.open_cycle() is None  # the workspace is free again
    audit = store.audit_entries()
    assert (audit["action"] == "cycle_failed").sum() == 1
    assert run_cli("resume", "--workspace", root, "--quiet").stdout.startswith("nothing to resume")
    assert cycle.start_cycle(baseline_ws) == 3  # the next cycle can start


@pytest.mark.slow
def test_a_stage_whose_process_keeps_dying_fails_its_cycle(baseline_ws):
    """A kill -9 (or the OOM killer) leaves no error behind: the tries are counted before the stage runs."""
    _max_tries(baseline_ws, 2)
    root = str(baseline_ws.root)
    for _ in range(2):
        killed = run_cli("evolve", "--workspace", root, "--quiet", env={"EVOLAB_FAULT": "stage_start"})
        assert killed.returncode == -9
    result = run_cli("resume", "--workspace", root, "--quiet", check=False)
    assert result.returncode == 1
    assert "cycle 2 failed (stage diagnose did not finish in 2 tries" in result.stdout
    assert baseline_ws.store.open_cycle() is None


@pytest.mark.slow
def test_a_stage_that_recovers_starts_its_count_over(baseline_ws):
    _max_tries(baseline_ws, 2)
    root = str(baseline_ws.root)
    killed = run_cli("evolve", "--workspace", root, "--quiet", env={"EVOLAB_FAULT": "stage_start"})
    assert killed.returncode == -9
    # diagnose now succeeds; the one death before it does not count against the next stage
    killed = run_cli("resume", "--workspace", root, "--quiet",
                     env={"EVOLAB_FAULT": "stage_start", "EVOLAB_FAULT_SKIP": "1"})
    assert killed.returncode == -9 and baseline_ws.store.open_cycle()["stage"] == "curate"
    done = run_cli("resume", "--workspace", root, "--quiet", check=True)
    assert "cycle 2 done" in done.stdout or "cycle 2 rejected" in done.stdout


# -- an approver can close a stuck cycle -------------------------------------------------------------------------
@pytest.mark.slow
def test_an_approver_abandons_a_stuck_cycle(pending_ws, monkeypatch, capsys):
    ws, gate_id = pending_ws
    root = ws.root
    code, _, err = _cli(monkeypatch, capsys, "abandon", "--workspace", root, "--cycle", 2, "--by", VIEWER,
                        password=VIEWER_PASSWORD)
    assert code != 0 and "approver" in err and ws.store.cycle(2)["status"] == "waiting"
    with engine_lock(ws):  # an engine is running: abandoning under it is refused
        code, _, err = _cli(monkeypatch, capsys, "abandon", "--workspace", root, "--cycle", 2, "--by", APPROVER)
    assert code != 0 and "stop it first" in err and ws.store.cycle(2)["status"] == "waiting"

    code, out, err = _cli(monkeypatch, capsys, "abandon", "--workspace", root, "--cycle", 2, "--by", APPROVER,
                          "--comment", "the training data was wrong")
    assert code == 0, err
    assert "cycle 2 abandoned" in out
    store = ws.store
    c = store.cycle(2)
    assert c["status"] == "abandoned" and c["finished_at"] is not None
    assert "abandoned by alice: the training data was wrong" == c["error"]
    gate = store.gate(gate_id)
    assert gate["status"] == "rejected" and gate["decided_by"] == APPROVER and "abandoned" in gate["comment"]
    assert store.alias("candidate") is None and store.alias("production") == "v1"
    entry = store.audit_entries().iloc[-1]
    assert entry["action"] == "cycle_abandoned" and entry["actor"] == APPROVER
    assert store.open_cycle() is None
    with pytest.raises(StoreConflict):  # its gate cannot be approved afterwards
        actions.decide_gate(ws, auth.authenticate(store, APPROVER, PASSWORD, "x"), gate_id, True)
    code, _, err = _cli(monkeypatch, capsys, "abandon", "--workspace", root, "--cycle", 2, "--by", APPROVER)
    assert code != 0 and "already abandoned" in err


def test_a_closed_cycle_never_moves_again(pending_ws):
    """A stage finishing after its cycle was closed writes nothing (its output and the move are one transaction)."""
    ws, _ = pending_ws
    store = ws.store
    store.abandon_cycle(2, APPROVER, "test")
    before = len(store.samples(2))
    with pytest.raises(StoreConflict, match="cycle 2 is abandoned"):
        store.save_samples(2, store.samples(2).head(0), "data_review")
    with pytest.raises(StoreConflict):
        store.promote(2, "v2", "engine", "late")
    assert len(store.samples(2)) == before and store.alias("production") == "v1"
    assert store.cycle(2)["stage"] == "gate"


# -- the stages are declared once --------------------------------------------------------------------------------
def test_no_stage_names_its_successor():
    """Only FLOWS says which stage comes next: no call that moves a cycle is given a stage name written in code."""
    from core.store import Store

    names = {name for flow in cycle.FLOWS.values() for name in flow} | {"done", "rejected", "failed"}
    movers = {}  # store method (and run_diagnosis) -> position of the parameter that names the next stage
    for name, fn in [*inspect.getmembers(Store, inspect.isfunction), ("run_diagnosis", cycle.run_diagnosis)]:
        params = [p for p in inspect.signature(fn).parameters if p != "self"]
        for wanted in ("next_stage", "stage"):
            if wanted in params:
                movers[name] = (params.index(wanted), wanted)
    assert {"save_samples", "register_version", "set_stage", "create_cycle"} <= set(movers)
    offenders = []
    for module in (cycle, core.flow, scaffold_stages):
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if not isinstance(node, ast.Call):
                continue
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if called not in movers:
                continue
            index, keyword = movers[called]
            args = ([node.args[index]] if len(node.args) > index else []) + \
                [k.value for k in node.keywords if k.arg == keyword]
            offenders += [f"{module.__name__}: {called}(... {a.value!r})" for a in args
                          if isinstance(a, ast.Constant) and a.value in names]
    assert not offenders
    for kind, flow in cycle.FLOWS.items():  # every exit leads to a stage of the same flow or an end
        for name, step in flow.items():
            for target in (step.next, step.otherwise):
                assert target is None or target in flow or target in ("done", "rejected"), (kind, name, target)
    assert cycle.EVOLVE_STAGES == list(cycle.FLOWS["evolve"])


@pytest.mark.slow
def test_the_engine_walks_the_table(baseline_ws):
    """A cycle's stage runs follow FLOWS, including the drift exit that skips the review."""
    outcome = cycle.evolve(baseline_ws, cycles=1, progress=False)[-1]
    ran = baseline_ws.store.stage_runs(outcome.cycle_id).sort_values("started_at")["stage"].tolist()
    flow, walk, stage = cycle.FLOWS["evolve"], [], "diagnose"
    passed = baseline_ws.store.drift_report(outcome.cycle_id)["passed"]
    while stage in flow and len(walk) < len(ran):
        walk.append(stage)
        step = flow[stage]
        stage = step.otherwise if (stage == "drift" and not passed) else step.next
    assert ran == walk


@pytest.mark.slow
def test_stale_temporary_files_are_swept_by_the_next_engine(baseline_ws):
    """A kill between writing a temporary file and renaming it leaves the temporary behind; the next engine run
    removes it (and nothing else)."""
    result = run_cli("evolve", "--workspace", str(baseline_ws.root), "--quiet", env={"EVOLAB_FAULT": "before_rename"})
    assert result.returncode == -9
    leftovers = [p for p in baseline_ws.root.rglob(".*.tmp")]
    assert leftovers
    run_cli("resume", "--workspace", str(baseline_ws.root), "--quiet", check=True)
    assert not [p for p in (baseline_ws.models, baseline_ws.checkpoints) for p in p.rglob(".*.tmp")]
