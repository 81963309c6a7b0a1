"""The Overview as the evolution story (issue 18, points 1 and 4): what needs a person first, one row per cycle
with its stages, finding, samples, estimates, decision and gain, a pending-decisions badge on every page, and
"updating…" instead of an error while the engine holds the store."""
from __future__ import annotations

from datetime import timedelta

from app import queries
from core import cycle, executor
from core.store import Store, StoreBusy, utcnow
from tests.conftest import APPROVER, approve_as
from tests.test_dashboard import open_page, texts, unreadable


def badge(at) -> str:
    return next(m.value for m in at.sidebar.markdown if "-badge[" in m.value)


def timeline(at):
    return next(d.value for d in at.dataframe if "Outcome" in d.value.columns)


def test_overview_puts_the_pending_gate_first_and_tells_each_cycle(monkeypatch, pending_ws):
    ws, gate_id = pending_ws
    at = open_page(monkeypatch, ws.root)
    gate = ws.store.gate(gate_id)
    assert at.subheader[0].value == "Needs a person now"
    assert f"Promotion gate {gate_id}** of cycle 2" in at.warning[0].value
    assert f"Deadline {gate['deadline']:%Y-%m-%d %H:%M:%S} UTC" in at.warning[0].value
    assert "Decide in Approvals" in [link.label for link in at.get("page_link")]
    assert "Nothing needs a person" not in texts(at)

    rows = timeline(at)
    assert list(rows["Cycle"]) == ["2", "1"] and list(rows["Kind"]) == ["evolve", "baseline"]
    waiting, baseline = rows.iloc[0], rows.iloc[1]
    assert waiting["Outcome"] == f"◷ waiting at promotion gate {gate_id}"
    assert waiting["Stages"].startswith("diagnose ") and " · curate " in waiting["Stages"]
    finding = ws.store.diagnoses(2).iloc[0]
    assert waiting["First finding"].endswith(finding["subject"])
    samples = ws.store.samples(2)
    kept = samples["status"].isin(["kept", "approved"]).sum()
    assert waiting["Samples generated → kept"] == f"{len(samples):,} → {kept:,} kept"
    assert "95% CI" in waiting["Candidate estimate"] and "95% CI" in waiting["Production estimate"]
    assert waiting["Candidate estimate"].endswith("gate rows, no traffic labels)")
    assert waiting["Decided by"] == "waiting for a person" and waiting["Net gain"].endswith("pts if promoted")
    assert baseline["Outcome"] == "✓ promoted" and baseline["Net gain"] == "baseline"
    assert baseline["Decided by"] == "automatic (the gate's policy)"
    assert any(c.value.startswith("Read at ") and c.value.endswith(" UTC") for c in at.caption)
    assert unreadable(at) == []


def test_the_badge_counts_pending_decisions_on_every_page(monkeypatch, pending_ws):
    ws, gate_id = pending_ws
    at = open_page(monkeypatch, ws.root, "audit")
    assert "1 decision pending" in badge(at)
    approve_as(ws, gate_id)
    queries.clear()
    at.run()
    assert "no decision pending" in badge(at)


def test_a_rejected_cycle_reads_rejected_with_its_reason(monkeypatch, pending_ws):
    ws, gate_id = pending_ws
    approve_as(ws, gate_id, approved=False, comment="the recall table worries me")
    assert cycle.resume(ws, progress=False).status == "rejected"
    at = open_page(monkeypatch, ws.root)
    row = timeline(at).iloc[0]
    assert (row["Cycle"], row["Outcome"], row["Decided by"]) == ("2", "✗ rejected", APPROVER)
    assert row["Why"] == "the recall table worries me" and row["Net gain"].startswith("0 (not shipped")
    assert "Nothing needs a person right now." in [s.value for s in at.success]
    assert unreadable(at) == []


def test_a_failed_then_a_stuck_cycle_need_a_person(monkeypatch, pending_ws):
    ws, _ = pending_ws
    ws.store.fail_cycle(2, "stage train failed 3 times; last error: train: RuntimeError: out of memory", "engine")
    at = open_page(monkeypatch, ws.root)
    assert "Cycle 2 failed at its gate stage" in at.error[0].value and "out of memory" in at.error[0].value
    assert timeline(at).iloc[0]["Outcome"] == "⚠ failed"

    cid = ws.store.create_cycle("evolve", "diagnose", "v1", "engine")
    ws.store.note_stage_error(cid, "diagnose: ValueError: no findings")
    queries.clear()
    at.run()
    assert f"Cycle {cid} looks stuck at its diagnose stage: its last try raised" in at.error[0].value
    assert timeline(at).iloc[0]["Outcome"] == "▸ running: diagnose"
    assert any("a cycle is running, read again every" in c.value for c in at.caption)

    # the next try finished and the cycle moved on: the error of the earlier try no longer means stuck
    ws.store.set_stage(cid, "curate")
    ws.store.record_stage_run(cid, "diagnose", utcnow() - timedelta(seconds=1), 1.5, 100.0)
    queries.clear()
    at.run()
    assert not at.error and timeline(at).iloc[0]["Stages"] == "diagnose 1.5 s · curate (now)"

    # long work inside the stage (core/executor.py's batches, here or on Ray) says how far it is on that line
    monkeypatch.setattr(executor, "NOTE_EVERY_S", 0.0)
    with executor.LocalExecutor() as ex:
        ex.notes = lambda text: ws.store.note_progress(cid, "curate", text)
        assert ex.map(Halve(), [[2, 4]] * 3 + [[6]], desc="encoding texts with v1") == [[1, 2]] * 3 + [[3]]
    row = ws.store.cycle(cid)
    queries.clear()
    at.run()
    assert timeline(at).iloc[0]["Stages"] == ("diagnose 1.5 s · curate (now: encoding texts with v1 here: 7 of 7, "
                                              f"at {row['progress_at']:%Y-%m-%d %H:%M:%S} UTC)")
    ws.store.set_stage(cid, "train")  # a note of a stage the cycle has left is not shown
    queries.clear()
    at.run()
    assert timeline(at).iloc[0]["Stages"] == "diagnose 1.5 s · train (now)"


class Halve(executor.Task):
    def run(self, held, batch):
        return [x // 2 for x in batch]


def test_samples_to_review_and_texts_to_label_wait_for_a_person(monkeypatch, pending_ws):
    import pandas as pd

    ws, gate_id = pending_ws
    ws.store.fail_cycle(2, "closed for the test", "engine")
    cid = ws.store.create_cycle("evolve", "curate", "v1", "engine")
    samples = pd.DataFrame({"generator": "templates", "parent_id": None, "text": [f"text {i}" for i in range(5)],
                            "label": "shipping_delay", "confidence": 0.9, "difficulty": 1, "scores": "{}",
                            "status": ["kept", "kept", "kept", "dropped", "verified"], "reason": ""})
    requests = pd.DataFrame({"example_id": [None, None], "text": ["where is it?", "why two charges?"],
                             "score": 0.5, "uncertainty": 0.5, "density": 0.5, "suggestions": "[]"})
    ws.store.save_samples(cid, samples, "data_review", requests)
    ws.store.open_gate(cid, "data_review", "human", {"passed": True, "reasons": ["ok"]}, utcnow() + timedelta(hours=1))
    kept = ws.store.samples(cid, status="kept")["id"].tolist()
    ws.store.review_samples(kept[:1], "reject", APPROVER)  # a reviewed sample no longer waits
    at = open_page(monkeypatch, ws.root)
    shown = [i.value for i in at.info]
    assert "2 kept samples nobody has reviewed wait before their cycle's data review gate." in shown
    assert "2 texts curation asked people to label wait for an answer." in shown
    links = [link.label for link in at.get("page_link")]
    assert {"Decide in Approvals", "Review in Synthetic data", "Label in Synthetic data"} <= set(links)
    assert "2 labels wanted" in badge(at) and "1 decision pending" in badge(at)


def test_a_busy_store_reads_updating_not_an_error(monkeypatch, pending_ws):
    ws, _ = pending_ws

    def busy(self, *args, **kwargs):
        raise StoreBusy("held by the engine")

    monkeypatch.setattr(Store, "cycle_timeline", busy)
    monkeypatch.setattr(Store, "pending_counts", busy)
    at = open_page(monkeypatch, ws.root)
    assert not at.exception and not at.error
    assert any(c.value.startswith(":material/hourglass_top: updating…") for c in at.caption)
    assert "updating…" in badge(at)
