"""The SQL-migration skill as a skill of the engine: the sandbox verifier inside curation (real PostgreSQL,
samples and their evidence stored in a real workspace), a domain's own check by the contract, and the preset.

The model is the one thing stood in for here (a fixed embedding per text, uniform probabilities): what is
tested is that execution, not the model, decides which samples hold, and training a model would cost a minute.
"""
from __future__ import annotations

import hashlib
import json
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from conftest import DATA, copy_workspace
from core.sandbox import LABELS

CLAIMS = [  # (sql, claimed label, what execution says)
    ("ALTER TABLE orders ADD COLUMN warehouse text NOT NULL;", "safe", "fails"),  # 23502: contradicted
    ("ALTER TABLE customers DROP COLUMN notes;", "loses_data", "loses_data"),
    ("DROP VIEW active_customers;", "breaks_queries", "breaks_queries"),
    ("VACUUM FULL orders;", "rewrites_table", "rewrites_table"),
    ("CREATE INDEX CONCURRENTLY orders_currency_idx ON orders (currency);", "safe", "safe"),
    ("COPY (SELECT 1) TO PROGRAM 'touch /tmp/evolab_sql_skill_escaped';", "safe", None),  # contained
]


def keep_when_ok(sample: dict) -> dict:
    """A domain's own check as a Python callable (curate.sandbox_callable = "test_sql_skill:keep_when_ok")."""
    return {"keep": "ok" in sample["text"], "evidence": {"chars": len(sample["text"])}, "reason": "looked at it"}


def _fake_embed(loaded, texts, **_):
    """A fixed unit vector per text and no opinion on its label: the model stays out of the decision."""
    emb = np.stack([np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)).normal(size=16)
                    for t in texts]) if texts else np.zeros((0, 16))
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True) if len(texts) else emb
    return emb.astype(np.float32), np.full((len(texts), len(loaded.labels)), 1 / len(loaded.labels))


def _curate(monkeypatch, rows: list[tuple[str, str]], check, **cfg_changes):
    """Curation with one generator that proposes `rows` (text, claimed label) and `check` as the verifier."""
    from core import curate, model as M
    from core.config import CurateConfig
    from core.curate.registry import GENERATORS, candidates

    monkeypatch.setattr(M, "embed_and_proba", _fake_embed)
    monkeypatch.setitem(GENERATORS, "sql_migrations", lambda ctx: candidates(
        "sql_migrations", [{"parent_id": None, "text": t, "label": lab} for t, lab in rows]))
    cfg = CurateConfig(generators=["sql_migrations"], perturbed_views=0, difficulty_control=False,
                       near_duplicate_similarity=0.99, **cfg_changes)
    seed = pd.read_csv(DATA / "sql_migrations_seed.csv").groupby("label").head(2).reset_index(drop=True)
    ctx = curate.Context(loaded=SimpleNamespace(labels=LABELS), seed=seed.assign(id=range(len(seed))),
                         pool=pd.DataFrame(columns=["id", "text"]), pairs=[], favoured=set(), cfg=cfg,
                         root=None, check=check)
    return curate.curate(ctx, pd.DataFrame({"text": ["COMMENT ON TABLE plans IS 'held out';"]}), pd.DataFrame(columns=["text", "label", "status",
                                                                                   "reviewed_by"]))


def _store(ws, samples) -> int:
    """The curate stage's write (core/store/samples.py) into a cycle of the workspace; returns the cycle id."""
    open_ = ws.store.open_cycle()
    cycle_id = open_["id"] if open_ else ws.store.create_cycle("evolve", "curate", None, "engine")
    ws.store.save_samples(cycle_id, samples, "curate")
    return cycle_id


@pytest.fixture(scope="module")
def sql_ws(tmp_path_factory):
    """A workspace made by the CLI's own entry point, as `python -m core init --preset ...` makes it (in this
    process: a second interpreter would spend its time importing torch)."""
    import contextlib
    import io

    from core.cli import main

    root = tmp_path_factory.mktemp("sqlskill") / "ws"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["init", "--workspace", str(root), "--preset", "sql-migrations", "--policy", "auto"]) == 0
    return root, out.getvalue()


def test_init_preset_makes_a_working_sql_migrations_workspace(sql_ws):
    from core.workspace import open_workspace

    root, out = sql_ws
    assert 'curate.sandbox = "local"' in out and "70 seed, 67 heldout, 400 unlabeled" in out
    ws = open_workspace(root)
    cfg = ws.config()
    assert "sql_migrations" in cfg.curate.generators and cfg.curate.sandbox == "local"
    assert ws.store.labels() == sorted(LABELS)
    held = set(ws.store.examples("heldout")["text"])
    assert held == set(pd.read_csv(DATA / "sql_migrations_heldout.csv")["text"])
    pool = ws.store.unlabeled_pool()
    # traffic never holds a held-out migration; a tenth of it is the probe that grades models on traffic
    assert len(pool) == 340 and len(ws.store.traffic_probe()) == 60 and not held & set(pool["text"])
    ws.store.migrate()  # what every later command does first
    assert ws.store.alias("production") is None and ws.store.open_cycle() is None


def test_a_bad_preset_is_one_line_and_a_non_zero_exit(tmp_path, capsys):
    from core.cli import main

    for argv in (["init", "--workspace", str(tmp_path / "w"), "--preset", "sql-migration"],
                 ["demo", "--workspace", str(tmp_path / "d"), "--preset", "tickets"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "unknown preset" in err and "sql-migrations" in err, err
    assert not (tmp_path / "w").exists() and not (tmp_path / "d").exists()


def test_a_preset_takes_guardrails_as_a_workspace_from_files_does(tmp_path, capsys):
    """Checked before anything is made (an unknown label: one line, exit 1, no workspace), then stored."""
    from core.cli import main
    from core.workspace import open_workspace

    bad, good = tmp_path / "bad.csv", tmp_path / "good.csv"
    pd.DataFrame({"text": ["DROP TABLE users;"], "expected_label": ["catastrophic"]}).to_csv(bad, index=False)
    pd.DataFrame({"text": ["DROP TABLE users;", "CREATE INDEX ON orders (id);"],
                  "expected_label": ["loses_data", "safe"]}).to_csv(good, index=False)
    assert main(["init", "--workspace", str(tmp_path / "w"), "--preset", "sql-migrations", "--guardrails", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'catastrophic'" in err and not (tmp_path / "w").exists(), err
    assert main(["init", "--workspace", str(tmp_path / "w"), "--preset", "sql-migrations", "--guardrails", str(good)]) == 0
    assert open_workspace(tmp_path / "w").store.guardrails()["expected_label"].tolist() == ["loses_data", "safe"]


def test_execution_decides_and_its_evidence_is_stored_with_the_sample(monkeypatch, pg, sql_ws, tmp_path):
    from core.sandbox.check import sandbox_execution_check

    check = sandbox_execution_check(pg, "postgres (test cluster)")
    check.close = lambda: None  # the session's cluster outlives this test
    samples, report = _curate(monkeypatch, [(sql, claimed) for sql, claimed, _ in CLAIMS], check)
    ws = copy_workspace(sql_ws[0], tmp_path / "ws")  # the module's workspace stays as init made it
    cycle_id = _store(ws, samples)
    stored = ws.store.samples(cycle_id).set_index("text")
    for sql, claimed, executed in CLAIMS:
        row = stored.loc[sql]
        evidence = json.loads(row["scores"])["sandbox"]
        if executed == claimed:
            assert row["status"] == "kept" and row["reason"].startswith(f"sandbox: execution confirms {claimed}")
            assert evidence["keep"] and evidence["executed_as"] == claimed
        else:
            assert row["status"] == "dropped" and not evidence["keep"]
    wrong = stored.loc[CLAIMS[0][0]]
    assert wrong["reason"].startswith("sandbox: executed as fails (23502 not_null_violation), claimed safe")
    assert json.loads(wrong["scores"])["sandbox"]["evidence"]["sqlstate"] == "23502"
    assert json.loads(stored.loc[CLAIMS[1][0]]["scores"])["sandbox"]["evidence"]["changed"]["customers"]
    assert stored.loc[CLAIMS[-1][0]]["reason"].startswith("sandbox: contained")
    assert report["sandbox"]["executed"] == len(CLAIMS) and report["sandbox"]["kept"] == 4
    assert report["sandbox"]["dropped_by"] == {"executed as fails (23502 not_null_violation), claimed safe": 1,
                                               "contained": 1}
    assert report["summary"].startswith(f"generated {len(CLAIMS)}, executed {len(CLAIMS)}, kept 4")
    assert report["per_generator"]["sql_migrations"]["confirmed"] == 4


def test_a_domain_check_by_command_or_callable_keeps_drops_and_fails_closed(monkeypatch, tmp_path):
    from core.sandbox.check import open_check

    script = tmp_path / "check.py"
    script.write_text("import json, sys, time\n"
                      "s = json.load(sys.stdin)\n"
                      "if 'slow' in s['text']: time.sleep(30)\n"
                      "if 'junk' in s['text']: print('not json'); sys.exit(0)\n"
                      "if 'crash' in s['text']: print('boom', file=sys.stderr); sys.exit(3)\n"
                      "print(json.dumps({'keep': 'ok' in s['text'], 'evidence': {'tests': 12, 'failed': 0}, "
                      "'reason': 'test suite ran'}))\n")
    rows = [("ok: passes its tests", "safe"), ("fails its tests", "safe"), ("junk answer", "fails"),
            ("crash in the checker", "fails"), ("slow checker", "loses_data")]
    with open_check(SimpleNamespace(sandbox="", sandbox_command=[sys.executable, str(script)], sandbox_callable="",
                                    sandbox_timeout_s=2, sandbox_workers=4)) as check:
        samples, report = _curate(monkeypatch, rows, check)
    by_text = samples.set_index("text")
    assert by_text.loc["ok: passes its tests", "status"] == "kept"
    assert json.loads(by_text.loc["ok: passes its tests", "scores"])["sandbox"]["evidence"] == {"tests": 12, "failed": 0}
    assert by_text.loc["fails its tests", "reason"] == "sandbox: test suite ran"
    assert "not JSON" in by_text.loc["junk answer", "reason"]
    assert "exited 3: boom" in by_text.loc["crash in the checker", "reason"]
    assert "ran past 2 s" in by_text.loc["slow checker", "reason"]
    assert (by_text.drop("ok: passes its tests")["status"] == "dropped").all()
    assert report["sandbox"]["executed"] == 5 and sum(report["sandbox"]["dropped_by"].values()) == 4

    from core.config import CurateConfig

    with open_check(CurateConfig(sandbox_callable="test_sql_skill:keep_when_ok")) as check:
        samples, _ = _curate(monkeypatch, rows[:2], check)
    assert list(samples["status"]) == ["kept", "dropped"]
    with pytest.raises(ValueError, match="cannot be loaded"):
        with open_check(CurateConfig(sandbox_callable="no_such_module:check")):
            pass


@pytest.mark.slow
def test_the_synthetic_data_page_shows_a_migration_as_sql_with_its_execution_evidence(monkeypatch, pg, sql_ws,
                                                                                       tmp_path):
    from streamlit.testing.v1 import AppTest

    from app import nav, queries
    from core import auth, gates
    from core.store import utcnow
    from core.sandbox.check import sandbox_execution_check

    check = sandbox_execution_check(pg, "postgres (test cluster)")
    check.close = lambda: None
    samples, report = _curate(monkeypatch, [CLAIMS[0][:2]], check)
    ws = copy_workspace(sql_ws[0], tmp_path / "ws")  # the module's workspace stays as init made it
    cycle_id = _store(ws, samples)
    # The curate stage's record and the data review it leads to, as the engine writes them.
    ws.store.record_stage_run(cycle_id, "curate", utcnow(), 1.0, 0.0, report)
    checks = gates.data_review_checks(ws.config().gates.data_review, ws.store.samples(cycle_id),
                                      ws.store.seed_examples()["label"])
    gates.open_gate(ws.store, cycle_id, "data_review", ws.config().gates.data_review.model_copy(
        update={"policy": "human"}), checks)
    auth.add_user(ws.store, "sql_alice", "approver", "sql-alice-secret")
    monkeypatch.setenv(queries.ENV_VAR, str(ws.root))
    at = AppTest.from_file(str(DATA.parent / "app" / "main.py"), default_timeout=60)
    at.run()
    at.text_input(key="signin_name").input("sql_alice")
    at.text_input(key="signin_password").input("sql-alice-secret")
    at.button(key="signin_submit").click().run()
    at.switch_page(nav.path("synthetic_data")).run()
    assert not at.exception, [e.value for e in at.exception]
    at.session_state["samples_table"] = {"selection": {"rows": [0], "columns": [], "cells": []}}  # a click on row 1
    at.run()
    assert [c.language for c in at.code] == ["sql"] and at.code[0].value in {sql for sql, _, _ in CLAIMS}
    assert any("executed as fails (23502 not_null_violation), claimed safe" in m.value for m in at.markdown)
    at.switch_page(nav.path("approvals")).run()  # the data review's evidence says what execution did
    assert not at.exception, [e.value for e in at.exception]
    assert any(m.value.startswith("**Executed** by postgres (test cluster): 1 candidates, 0 confirmed")
               for m in at.markdown), [m.value for m in at.markdown]


def _sigterm_inside_open_check(body: str, settle_s: float = 0.0) -> None:
    """A process opens the local sandbox's check and runs `body` (indented code) inside it; SIGTERM it: it exits
    143, and the cluster's folder and processes are gone."""
    import signal
    import subprocess
    import time
    from pathlib import Path

    from conftest import ROOT, _alive, _processes_under

    script = ("import time\n"
              "from core.config import CurateConfig\n"
              "from core.sandbox.check import open_check\n"
              "with open_check(CurateConfig(sandbox='local', sandbox_workers=1)) as check:\n"
              "    root = check.sandbox.cluster.root\n"
              f"{body}")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    root = Path(proc.stdout.readline().strip())
    assert root.is_dir()
    time.sleep(settle_s)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    deadline = time.time() + 10
    while _processes_under(root) and time.time() < deadline:
        time.sleep(0.1)
    assert not root.exists() and not _processes_under(root)
    assert not _alive(proc.pid)


def test_a_curation_stopped_by_sigterm_leaves_no_cluster_behind():
    """The demo stops its engine with SIGTERM; mid-curation that must still stop the cluster and remove its folder."""
    _sigterm_inside_open_check("    print(root, flush=True)\n"
                               "    while True:\n"
                               "        check.run([{'text': 'VACUUM FULL orders;', 'label': 'rewrites_table'}])\n",
                               settle_s=0.5)


def test_a_cleanup_the_server_never_answers_after_sigterm_still_exits_and_leaves_nothing():
    """SIGTERM landed inside psycopg and the cleanup's next statement waited forever (1 stop in 6 under load):
    here the cleanup's statement is one the server does not answer for an hour. The server is stopped under it
    after a few seconds, the process exits as SIGTERM asks, and the cluster is gone."""
    _sigterm_inside_open_check("    admin = check.sandbox._admin()\n"
                               "    print(root, flush=True)\n"
                               "    try:\n"
                               "        while True:\n"
                               "            time.sleep(0.05)\n"
                               "    except SystemExit:\n"
                               "        admin.execute('SELECT pg_sleep(3600)')\n"
                               "        raise\n")


def test_the_sandbox_settings_are_validated_like_every_other_knob():
    from core.config import ConfigError, parse_config

    ok = parse_config({"curate": {"generators": ["sql_migrations"], "sandbox": "host=/tmp port=5432 user=me"}})
    assert ok.curate.sandbox.startswith("host=") and ok.curate.generators == ["sql_migrations"]
    for bad, message in [({"sandbox": "postgres"}, "not \"\", \"local\", \"duckdb\" or a PostgreSQL DSN"),
                         ({"sandbox": "local", "sandbox_command": ["./check.sh"]}, "one execution check at a time"),
                         ({"sandbox_callable": "checks.run"}, "is not module:function"),
                         ({"sandbox_command": [""]}, "sandbox_command"),
                         ({"sandbox_timeout_s": 0}, "sandbox_timeout_s"),
                         ({"generators": ["sql"]}, "generators")]:
        with pytest.raises(ConfigError, match=message):
            parse_config({"curate": bad})
