"""The server when the store is not there for it: held by another process (503 with Retry-After, never a 500 or
a request held for minutes), full of waiting corrections (503, none dropped), or refusing one batch (set aside,
newer rows go on)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from conftest import LABELS, copy_workspace
from core import auth
from core.config import ServeConfig
from core.serve.logbuffer import LogBuffer
from core.serve.swap import HotSwap
from core.store import Store, StoreBusy, utcnow
from test_serve import _metric, _quick_logs, server

HOLD = """
import sys, time, duckdb
while True:  # the server may be writing right now: wait for our turn, then keep the file
    try:
        con = duckdb.connect(sys.argv[1])
        break
    except duckdb.IOException:
        time.sleep(0.05)
con.execute("BEGIN TRANSACTION")
print("held", flush=True)
sys.stdin.read()
"""


@contextmanager
def held(db: Path):
    """Another process holding the workspace database, as a long engine transaction does."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def _prediction(pid: str, text: str = "where is my parcel") -> dict:
    return {"id": pid, "at": utcnow(), "text": text, "label": "shipping_delay", "confidence": 0.9,
            "model_version": "v1", "scaffold_version": "analyze_plan_execute", "latency_ms": 1.0}


def _until(check, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.2)
    return result


@pytest.fixture(scope="module")
def busy_served(tmp_path_factory, _baseline_template):
    root = tmp_path_factory.mktemp("busy") / "ws"
    ws = copy_workspace(_baseline_template, root)
    _quick_logs(ws, store_patience_s=1.0, retry_after_s=5, max_buffered_feedback=3)
    token = auth.new_token(ws.store, "ops-bot", "test")
    # a prediction an earlier server logged: only the store knows it
    ws.store.log_production(pd.DataFrame([_prediction("old-1")]), pd.DataFrame(columns=Store.FEEDBACK_COLUMNS))
    with server(ws) as (client, proc):
        client.headers["Authorization"] = f"Bearer {token}"
        yield ws, client


@pytest.mark.slow
def test_a_busy_store_is_a_quick_503_with_retry_after(busy_served):
    """Feedback on an old prediction reads the store: held by another process, that used to hold the request
    thread for the store's two minutes and then answer 500."""
    ws, client = busy_served
    correction = {"id": "old-1", "label": "billing_question"}
    with held(ws.db):
        t0 = time.monotonic()
        r = client.post("/feedback", json=correction)
        assert r.status_code == 503, r.text
        assert time.monotonic() - t0 < 10
        assert r.headers["Retry-After"] == "5" and "busy" in r.json()["detail"]
        # the prediction path never needs the store, and the server says what it sees
        assert client.post("/predict", json={"texts": ["my card was declined"]}).status_code == 200
        _until(lambda: client.get("/healthz").json()["store_busy"], "the flusher never found the store busy")
        assert _metric(client, "evolab_store_busy") == 1
        t0 = time.monotonic()
        assert client.post("/feedback", json=correction).status_code == 503
        assert time.monotonic() - t0 < 1  # known busy: answered at once, the store is not asked again
    _until(lambda: client.post("/feedback", json=correction).status_code == 200, "never accepted once free")
    _until(lambda: "old-1" in set(ws.store.production_feedback()["prediction_id"]), "correction never stored")
    assert 'status="500"' not in client.get("/metrics").text


def test_a_full_feedback_buffer_refuses_with_503_and_drops_nothing(busy_served):
    """Corrections used to pile up without bound while the store was busy; now past
    `serve.max_buffered_feedback` they are refused (the client keeps them), never dropped."""
    ws, client = busy_served
    with held(ws.db):
        texts = [f"parcel {i} has not arrived" for i in range(4)]
        preds = client.post("/predict", json={"texts": texts}).json()["predictions"]
        answers = [client.post("/feedback", json={"id": p["id"], "label": LABELS[0]}) for p in preds]
        assert [r.status_code for r in answers] == [200, 200, 200, 503], [r.text for r in answers]
        assert answers[3].headers["Retry-After"] == "5" and "waiting" in answers[3].json()["detail"]
        assert _metric(client, "evolab_log_refused_feedback_total") == 1
    ids = {p["id"] for p in preds}
    _until(lambda: client.post("/feedback", json={"id": preds[3]["id"], "label": LABELS[0]}).status_code == 200,
           "the refused correction was never accepted once the store was free")
    _until(lambda: ids <= set(ws.store.production_feedback()["prediction_id"]), "corrections never stored")
    assert _metric(client, "evolab_log_set_aside_batches_total") == 0


def test_a_batch_the_store_refuses_is_set_aside_and_newer_rows_go_on(tmp_path):
    """A batch with a row the store cannot write used to be retried forever ahead of every newer row: no
    prediction or correction was logged again until the server restarted."""
    store = Store(tmp_path / "evolab.duckdb", patience_s=1.0)
    logs = LogBuffer(store, ServeConfig(max_flush_failures=3), tmp_path / "serve-rejected")
    logs.add_predictions([_prediction("p1")])
    logs.add_feedback({"prediction_id": None, "label": LABELS[0], "at": utcnow(), "actor": "token:x"})  # NOT NULL
    assert logs.flush() == 0 and logs.failures == 1
    logs.add_predictions([_prediction("p2", "my card was declined")])
    logs.add_feedback({"prediction_id": "p2", "label": LABELS[1], "at": utcnow(), "actor": "token:x"})
    assert logs.flush() == 0 and logs.flush() == 0  # the failing batch alone, two more times: set aside
    assert logs.set_aside_batches == 1 and logs.set_aside_rows == 2 and logs.failures == 0
    assert logs.flush() == 2
    assert store.known_predictions(["p1", "p2"]) == {"p2"}
    assert list(store.production_feedback()["prediction_id"]) == ["p2"]
    [kept] = (tmp_path / "serve-rejected").iterdir()
    rows = [json.loads(line) for line in kept.read_text().splitlines()]
    assert [(r["table"], r.get("id"), r.get("prediction_id")) for r in rows] == [("predictions", "p1", None),
                                                                                ("feedback", None, None)]


@pytest.mark.slow
def test_a_busy_store_never_sets_a_batch_aside_while_serving(tmp_path):
    """Busy is not the batch's fault: kept however many flushes fail, written once the lock is gone. Only at
    shutdown is what the store cannot take set aside, not lost."""
    store = Store(tmp_path / "evolab.duckdb", patience_s=0.3)
    store.migrate()
    logs = LogBuffer(store, ServeConfig(max_flush_failures=1), tmp_path / "serve-rejected")
    logs.add_predictions([_prediction("p1")])
    with held(store.path):
        assert [logs.flush() for _ in range(3)] == [0, 0, 0]
        assert logs.busy() and logs.pending() == 1 and logs.set_aside_batches == 0
        with pytest.raises(StoreBusy):
            logs.knows("p0")
    assert logs.flush() == 1 and not logs.busy() and store.known_predictions(["p1"]) == {"p1"}
    logs.add_predictions([_prediction("p2")])
    with held(store.path):
        logs.close()
    assert logs.set_aside_batches == 1 and logs.pending() == 0
    [kept] = (tmp_path / "serve-rejected").iterdir()  # whole: no temporary file left beside it
    assert json.loads(kept.read_text())["id"] == "p2"


def test_a_hot_swap_that_found_the_store_busy_is_tried_again(tmp_path):
    """A build that failed on a lock used to count as a broken version: the new production model was never
    loaded until the alias moved again."""
    store = Store(tmp_path / "evolab.duckdb", patience_s=0.3)
    store.migrate()
    alias = {"production": "v1"}
    swap = HotSwap({"model": lambda: alias["production"]}, lambda keys: (keys["model"], store.labels()))
    swap.start()
    swap.close()
    alias["production"] = "v2"
    with held(store.path):
        assert swap.check() is False and swap.current[0] == "v1"
    assert swap.check() is True and swap.current[0] == "v2"
