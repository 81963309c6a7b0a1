import subprocess
import sys
import textwrap
import time

import duckdb
import pandas as pd
import pytest

from core import auditkey
from core.store import MIGRATIONS, SCHEMA_VERSION, Store, StoreConflict, entry_mac
from tests.conftest import ROOT, run_cli

TABLES = {"datasets", "examples", "cycles", "train_metrics", "eval_results", "model_versions", "aliases",
          "alias_history", "synthetic_samples", "gates", "audit_log", "diagnoses", "stage_runs", "meta", "labels"}


def test_schema_is_versioned_and_has_every_table(tmp_path):
    store = Store(tmp_path / "a.duckdb")
    assert store.migrate() == SCHEMA_VERSION == len(MIGRATIONS)
    assert store.schema_version() == SCHEMA_VERSION
    con = duckdb.connect(str(tmp_path / "a.duckdb"), read_only=True)
    names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    con.close()
    assert TABLES <= names


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "b.duckdb"
    Store(path).migrate()
    con = duckdb.connect(str(path))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    Store._migrated.discard(str(path.resolve()))
    with pytest.raises(RuntimeError, match="newer"):
        Store(path).audit("t", "x", "y")


def test_bulk_samples_replace_not_duplicate_and_advance_stage(workspace):
    store = workspace.store
    cid = store.create_cycle("evolve", "curate", None, "test")
    frame = pd.DataFrame({"generator": "g", "parent_id": [1, 2, 3], "text": ["a", "b", "c"], "label": "x",
                          "confidence": 0.9, "difficulty": 0, "scores": "{}", "status": "kept", "reason": "r"})
    store.save_samples(cid, frame, "train")
    store.save_samples(cid, frame, "train")  # a resumed stage writes again: replaced, never doubled
    assert len(store.samples(cid)) == 3
    assert store.cycle(cid)["stage"] == "train"


def test_metrics_rerecorded_after_resume_are_not_duplicated(workspace):
    store = workspace.store
    store.record_metrics("run", [(10, "train_loss", 1.0, 0.1), (20, "train_loss", 0.8, 0.2)])
    store.record_metrics("run", [(20, "train_loss", 0.7, 0.2)])
    frame = store.metrics("run")
    assert len(frame) == 2 and frame.loc[frame.step == 20, "value"].item() == pytest.approx(0.7)


def test_audit_log_is_hash_chained(workspace):
    store = workspace.store
    store.audit("alice", "note", "thing", {"k": 1})
    log = store.audit_entries()
    key = auditkey.read_key(auditkey.key_path(store.audit_snapshot()[1]["workspace_id"]))
    prev = "0" * 64
    for row in log.itertuples():
        assert row.prev_hash == prev
        assert row.hash == entry_mac(key, prev, row.at.to_pydatetime(), row.actor, row.action, row.subject,
                                     row.detail)
        prev = row.hash


def test_gate_decided_twice_is_refused(workspace):
    store = workspace.store
    cid = store.create_cycle("evolve", "gate", None, "test")
    from datetime import datetime, timedelta

    gid = store.open_gate(cid, "promotion", "human", {"passed": True}, datetime.now() + timedelta(hours=1))
    assert store.open_gate(cid, "promotion", "human", {}, datetime.now()) == gid  # idempotent
    store.decide_gate(gid, True, "alice", "", False)
    with pytest.raises(StoreConflict, match="already decided"):
        store.decide_gate(gid, False, "bob", "", False)


def test_lock_held_by_another_process_is_waited_out(workspace):
    """A writer in another process holds the file; our call retries instead of failing."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import duckdb, time, sys
        con = duckdb.connect({str(workspace.db)!r})
        print("locked", flush=True)
        time.sleep(2.5)
        con.close()
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    started = time.monotonic()
    assert workspace.store.labels()  # blocked while the other process holds the file
    assert time.monotonic() - started > 1.0
    holder.wait(timeout=30)


@pytest.mark.slow
def test_cli_and_store_from_two_processes_at_once(workspace):
    """One process writes in a loop while the CLI reads status: no lock error reaches the user."""
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(ROOT)!r})
        from core.store import Store
        store = Store({str(workspace.db)!r})
        for i in range(60):
            store.audit("writer", "tick", str(i))
            store.record_metrics("concurrent", [(i, "loss", 1.0 / (i + 1), 0.0)])
    """)])
    results = [run_cli("status", "--workspace", str(workspace.root), "--json") for _ in range(3)]
    assert writer.wait(timeout=300) == 0
    for result in results:
        assert result.returncode == 0, result.stderr
        assert "lock" not in result.stderr.lower()
    assert len(workspace.store.metrics("concurrent")) == 60


def _other_process_opens(path) -> bool:
    """Whether a separate process can open the file for writing right now."""
    probe = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import duckdb, sys
        try:
            duckdb.connect({str(path)!r}).close()
        except duckdb.Error:
            sys.exit(3)""")], capture_output=True, timeout=60)
    return probe.returncode == 0


def test_a_burst_of_calls_shares_one_open_file_and_lets_go_at_its_end(workspace):
    """Store.kept_open: the calls inside run on one open file (every Store of that file, under any spelling of its
    path), each in its own transaction; no other process gets in until the block ends, and then at once."""
    store = workspace.store
    other = Store(workspace.root / "." / workspace.db.name)
    with store.kept_open():
        store.audit("tester", "inside", "burst")
        assert other.audit_entries()["action"].iloc[-1] == "inside"  # a second Store reads through the open file
        assert not _other_process_opens(workspace.db)
        with store.kept_open():  # nested: the outer block's file serves
            assert len(store.cycles()) == len(other.cycles())
    assert _other_process_opens(workspace.db)
    with pytest.raises(duckdb.Error):
        with store.kept_open(read_only=True):
            store.audit("tester", "refused", "a reader's block writes nothing")
    assert "refused" not in set(store.audit_entries()["action"])
