"""The HTTP server against a real process on loopback: predict, feedback, bad input, hot swap under load."""
from __future__ import annotations

import re
import signal
import socket
import threading
import time
from contextlib import contextmanager

import httpx
import pandas as pd
import pytest

from conftest import APPROVER, PASSWORD, copy_workspace, run_cli
from core import actions, auth, cycle
from core.scaffolds import archive
from core.store import utcnow
from tests.engine_process import EngineProcess


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _quick_logs(ws, **serve) -> None:
    """Poll and flush often, so tests see swaps and logs within a second."""
    config = ws.config()
    config.serve.poll_s, config.serve.flush_interval_s = 0.2, 0.2
    for key, value in serve.items():
        setattr(config.serve, key, value)
    ws.save_config(config)


@contextmanager
def server(ws):
    """`python -m core serve` as a user starts it; stopped with SIGTERM, which must exit 0."""
    port = _free_port()
    proc = EngineProcess("serve", "--workspace", str(ws.root), "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read()[-3000:]}")
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        with httpx.Client(base_url=base, timeout=30) as client:
            yield client, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def _stop(proc) -> str:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory, _baseline_template):
    """One server on a copy of the baseline workspace (production v1) for the request tests."""
    root = tmp_path_factory.mktemp("served") / "ws"
    ws = copy_workspace(_baseline_template, root)
    _quick_logs(ws, max_texts=8, max_text_chars=200, max_body_bytes=1024)
    token = auth.new_token(ws.store, "ops-bot", "test")
    with server(ws) as (client, proc):
        client.headers["Authorization"] = f"Bearer {token}"
        yield ws, client, proc


def _metric(client, name: str) -> float:
    text = client.get("/metrics").text
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


@pytest.mark.slow
def test_predict_and_feedback_are_logged_and_feed_the_loop(served):
    ws, client, _ = served
    labels = set(ws.store.labels())
    held = ws.store.examples("heldout").iloc[0]
    probe = ws.store.traffic_probe().iloc[0]  # rows that grade models: served, corrected, never trained on
    texts = ["my card payment was declined twice at checkout", "where is my parcel, it is a week late",
             held["text"], probe["text"]]
    r = client.post("/predict", json={"texts": texts})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 4 and len({p["id"] for p in preds}) == 4
    assert all(p["label"] in labels and 0 < p["confidence"] <= 1 for p in preds)
    assert {(p["model_version"], p["scaffold_version"]) for p in preds} == {("v1", "analyze_plan_execute")}
    # corrections right away: the ids are still in the buffer, not yet in the store
    wrong = [next(l for l in sorted(labels) if l != p["label"]) for p in preds]
    for p, label in zip(preds, wrong):
        r = client.post("/feedback", json={"id": p["id"], "label": label, "actor": "carol"})
        assert r.status_code == 200, r.text
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["model_version"] == "v1"
    deadline = time.monotonic() + 30
    while ws.store.known_predictions([p["id"] for p in preds]) != {p["id"] for p in preds}:
        assert time.monotonic() < deadline, "predictions never reached the store"
        time.sleep(0.2)
    time.sleep(0.5)
    # an id known only from the store (flushed) is still accepted
    assert client.post("/feedback", json={"id": preds[0]["id"], "label": wrong[0], "actor": "carol"}).status_code == 200
    assert _metric(client, "evolab_predicted_texts_total") >= 3
    assert _metric(client, "evolab_feedback_total") >= 4
    assert 'model_version="v1"' in client.get("/metrics").text
    assert _metric(client, 'evolab_predict_latency_ms{quantile="0.5"}'.split("{")[0]) > 0

    store = ws.store
    pool = store.unlabeled_pool()["text"].tolist()
    assert texts[0] in pool and texts[1] in pool and held["text"] not in pool  # never a held-out text
    fb = store.production_feedback("v1")
    assert set(fb["text"]) >= set(texts[:2]) and not {held["text"], probe["text"]} & set(fb["text"])
    assert probe["text"] not in pool
    assert (fb["served"] != fb["label"]).all()
    # who sent it is the token, not what the client says; the client's word is kept beside it
    assert set(fb.set_index("text").loc[texts[:2], "actor"]) == {"token:ops-bot (carol)"}
    log = store.audit_entries()
    assert (log["action"] == "feedback_received").any() and "token:ops-bot (carol)" in set(log["actor"])
    # corrections are candidates for curation, not training rows: nothing trains on them unverified
    train = cycle._training_data(ws, {"kind": "evolve", "id": 99})
    assert not set(texts[:2]) & set(train["text"])
    summary = store.production_summary()
    assert summary["predictions"] >= 3 and summary["corrected_errors"] >= 3


BAD = [
    ("/predict", {"texts": []}, 422, "texts is empty"),
    ("/predict", {"texts": list("abcdefghi")}, 413, "too many texts: 9, at most 8"),
    ("/predict", {"texts": ["fine", ""]}, 422, "texts[1] is empty"),
    ("/predict", {"texts": ["   "]}, 422, "texts[0] is empty"),
    ("/predict", {"texts": ["ok", 7]}, 422, "texts.1: Input should be a valid string"),
    ("/predict", {"texts": "one text"}, 422, "texts: Input should be a valid list"),
    ("/predict", {"text": ["a"]}, 422, "missing field 'texts'"),
    ("/predict", {"texts": ["x" * 201]}, 413, "texts[0] has 201 characters, at most 200"),
    ("/feedback", {"id": "nope", "label": "shipping_delay"}, 404, "unknown prediction id 'nope'"),
    ("/feedback", {"id": "nope", "label": "no_such_label"}, 422, "unknown label 'no_such_label'"),
    ("/feedback", {"id": 12, "label": "shipping_delay"}, 422, "id: Input should be a valid string"),
]


def test_feedback_needs_a_live_api_token(served):
    """Anyone who reaches the server could put labeled rows into training: now only a token's holder can
    send corrections, a revoked token stops working within a poll, and nothing is logged for a refusal."""
    ws, client, _ = served
    pred = client.post("/predict", json={"texts": ["my parcel is late"]}).json()["predictions"][0]
    before = _metric(client, "evolab_feedback_total")
    body = {"id": pred["id"], "label": "shipping_delay", "actor": "mallory"}
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer evl_forged"}, {"Authorization": "Basic x"}):
        r = client.post("/feedback", json=body, headers=headers)
        assert r.status_code == 401 and "needs an API token" in r.json()["detail"], r.text
    second = auth.new_token(ws.store, "temp-bot", "test")
    deadline, accepted = time.monotonic() + 30, 0

    def send() -> int:
        nonlocal accepted
        code = client.post("/feedback", json=body, headers={"Authorization": f"Bearer {second}"}).status_code
        accepted += code == 200
        return code

    while send() != 200:
        assert time.monotonic() < deadline, "a new token was never accepted"
        time.sleep(0.2)
    ws.store.revoke_token("temp-bot", "test")
    while send() != 401:
        assert time.monotonic() < deadline, "a revoked token kept working"
        time.sleep(0.2)
    assert accepted >= 1 and _metric(client, "evolab_feedback_total") == before + accepted
    stored = ws.store.tokens()
    assert second not in stored.to_string() and stored["token_hash"].str.startswith("hmac-sha256$").all()


def test_an_adopted_scaffold_is_served_without_a_restart(served):
    ws, client, _ = served
    before = client.post("/predict", json={"texts": ["my card was declined"]}).json()["predictions"][0]
    assert before["scaffold_version"] == "analyze_plan_execute" and before["abstained"] is False
    # a scaffold that routes everything under 100% confidence to a person: every answer abstains
    sid, _ = archive.add(ws.store, {"name": "cautious", "steps": [{"type": "classify"},
                                                                  {"type": "abstain", "threshold": 1.0}]}, "test")
    ws.store.adopt_scaffold(sid, "test", "planted for the hot-swap test")
    try:
        deadline = time.monotonic() + 60
        while True:
            after = client.post("/predict", json={"texts": ["my card was declined"]})
            assert after.status_code == 200, after.text
            row = after.json()["predictions"][0]
            if row["scaffold_version"] == sid:
                break
            assert time.monotonic() < deadline, "the adopted scaffold was never picked up"
            time.sleep(0.2)
        assert row["abstained"] is True and row["model_version"] == "v1"
    finally:
        archive.ensure_builtins(ws.store)
        ws.store.adopt_scaffold("analyze_plan_execute", "test", "back to the default")


def test_bad_input_gets_a_clear_4xx_and_writes_nothing(served):
    ws, client, _ = served
    before = (_metric(client, "evolab_predicted_texts_total"), _metric(client, "evolab_feedback_total"))
    for path, body, code, message in BAD:
        r = client.post(path, json=body)
        assert r.status_code == code and r.json()["detail"].startswith(message), (path, body, r.text)
    r = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
    big = {"texts": ["word " * 38] * 8}  # each text is allowed, the body is not
    r = client.post("/predict", json=big)
    assert r.status_code == 413 and "request body too large" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit must hold while streaming too
        yield b'{"texts": ["'
        for _ in range(50):
            yield b"x" * 100
        yield b'"]}'
    r = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert (_metric(client, "evolab_predicted_texts_total"), _metric(client, "evolab_feedback_total")) == before
    assert _metric(client, "evolab_requests_total") > 0
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/predict", "/feedback", "/healthz", "/metrics"}


@pytest.mark.slow
def test_promotion_and_rollback_swap_under_steady_load(pending_ws):
    ws, gate_id = pending_ws
    _quick_logs(ws)
    with server(ws) as (client, proc):
        seen, failures, stop = [], [], threading.Event()

        def load():
            with httpx.Client(base_url=str(client.base_url), timeout=30) as own:
                while not stop.is_set():
                    try:
                        r = own.post("/predict", json={"texts": ["I was charged twice for my order"]})
                        if r.status_code != 200:
                            failures.append(f"{r.status_code} {r.text}")
                        else:
                            seen.append(r.json()["predictions"][0]["model_version"])
                    except httpx.HTTPError as err:
                        failures.append(repr(err))

        def wait_for(version: str) -> None:
            deadline = time.monotonic() + 120
            while not (seen and seen[-1] == version):
                assert time.monotonic() < deadline, f"{version} never served; last {seen[-3:]}"
                time.sleep(0.1)

        worker = threading.Thread(target=load)
        worker.start()
        try:
            wait_for("v1")
            actions.decide_gate(ws, auth.authenticate(ws.store, APPROVER, PASSWORD, "test"), gate_id, True, "ship it")
            resumed = cycle.resume(ws, progress=False)
            assert resumed.status == "done", (resumed.message, ws.store.gates().to_dict("records"))
            assert ws.store.alias("production") == "v2"
            wait_for("v2")
            n_v2 = len(seen)
            rolled = run_cli("rollback", "--workspace", str(ws.root), "--to", "v1", "--by", APPROVER,
                             env={"EVOLAB_PASSWORD": PASSWORD})
            assert rolled.returncode == 0, rolled.stderr
            wait_for("v1")
            time.sleep(0.5)
        finally:
            stop.set()
            worker.join()
        assert failures == []
        assert "v2" in seen[:n_v2] and seen[-1] == "v1"
        # once a version is seen, requests never go back to an older one until the next move
        first_v2 = seen.index("v2")
        assert set(seen[first_v2:n_v2]) == {"v2"}
        assert client.get("/healthz").json()["hot_swaps"] == 2
        out = _stop(proc)
    assert "predictions" in out
    logged = ws.store.production_summary()
    assert logged["predictions"] == len(seen)  # every request logged, flushed on shutdown
    assert set(logged["by_version"]["model_version"]) == {"v1", "v2"}


def test_a_bearer_with_a_public_token_id_costs_no_slow_hash(workspace, monkeypatch):
    """Issue 26.8: a bearer value starting with a token's public prefix made the server run argon2 (0.2 s,
    64 MiB) per request before anyone was authenticated; a token is now found by its id and checked with one
    HMAC of its high-entropy secret."""
    from argon2 import PasswordHasher

    from core.serve.tokens import TokenSet

    real, slow = PasswordHasher.verify, []

    def counting(self, *args, **kwargs):
        slow.append(1)
        return real(self, *args, **kwargs)

    token = auth.new_token(workspace.store, "ops-bot", "test")
    frame = workspace.store.tokens(active_only=True)
    tokens = TokenSet(list(zip(frame["name"], frame["prefix"], frame["token_hash"])))
    public = frame["prefix"].iloc[0]  # what `tokens list` shows anyone who can read the workspace
    monkeypatch.setattr(PasswordHasher, "verify", counting)
    guesses = [f"{public}_{'x' * 43}", f"{public}{token[len(public):-1]}", token[:len(public)] + "_guess"]
    started = time.perf_counter()
    assert [tokens.name_for(g) for g in guesses] == [None, None, None]
    assert not slow and time.perf_counter() - started < 0.05
    assert tokens.name_for(token) == "ops-bot" and not slow


def test_serving_beyond_loopback_warns(capsys, tmp_path):
    """Issue 26.8: `serve --host 0.0.0.0` said nothing about being reachable from the network."""
    from core.cli import main

    for host, warned in (("0.0.0.0", True), ("127.0.0.1", False), ("localhost", False)):
        assert main(["serve", "--workspace", str(tmp_path / "none"), "--host", host]) == 1  # no workspace there
        err = capsys.readouterr().err
        assert ("warning: the server listens on" in err) == warned and "no Evolab workspace" in err


@pytest.mark.slow
def test_server_without_production_model_fails_in_one_line(workspace):
    result = run_cli("serve", "--workspace", str(workspace.root), "--port", str(_free_port()), timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: no production model yet (run `python -m core evolve` "
                                                  "and approve its gate)"]


def test_production_errors_rank_first(baseline_ws):
    from core.diagnose.errors import pair_findings, production_findings, rank, target_labels

    held = pd.DataFrame({"example_id": range(12), "text": [f"t{i}" for i in range(12)],
                         "label": ["a"] * 12, "predicted": ["b"] * 10 + ["a"] * 2,
                         "correct": [False] * 10 + [True] * 2})
    feedback = pd.DataFrame({"prediction_id": ["p1", "p2", "p3"], "text": ["x", "y", "z"],
                             "served": ["c", "c", "d"], "label": ["d", "d", "d"]})
    found = rank(pair_findings(held, 5) + production_findings(feedback, 5), set())
    assert list(found["kind"]) == ["production_error", "confusion_pair"]
    assert found["subject"].iloc[0] == "d -> c" and found["severity"].iloc[0] == 2.0
    assert target_labels(found) == {"a", "b", "c", "d"}
