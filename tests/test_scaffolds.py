"""Scaffolds with known answers: the paired statistic adopts a planted better program and never noise,
a guardrail-breaking program is refused, and the search's archive and lineage survive a kill -9."""
import json
import random
import threading
from http.server import HTTPServer

import numpy as np
import pytest

from core import cycle, registry, scaffolds
from core.cli import main
from core.scaffolds import abtest, archive, mutate, spec as S, stages
from core.scaffolds.run import Batch, bank_for, run as run_scaffold
from tests.conftest import ChatHandler, run_cli


# -- the statistics on constructed vectors ---------------------------------------------------------------
def test_mcnemar_known_answers():
    prod = np.array([0] * 10 + [1] * 10, bool)
    better = np.ones(20, bool)  # 10 discordant pairs, all won by the candidate
    assert abtest.mcnemar(prod, better) == {"candidate_only": 10, "production_only": 0,
                                            "p_value": pytest.approx(2 * 0.5 ** 10)}
    mixed = prod.copy()
    mixed[:3] = True
    mixed[10] = False  # 3 wins, 1 loss: p = P(|X - 2| >= 1), X ~ Bin(4, 1/2) = 10/16
    assert abtest.mcnemar(prod, mixed)["p_value"] == pytest.approx(10 / 16)
    assert abtest.mcnemar(prod, prod)["p_value"] == 1.0


def test_paired_bootstrap_known_answers():
    prod = np.array([0] * 10 + [1] * 10, bool)
    same = abtest.paired_bootstrap(prod, prod, 1000, 0.05)
    assert same == {"difference": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    better = abtest.paired_bootstrap(prod, np.ones(20, bool), 1000, 0.05)
    assert better["difference"] == 0.5 and 0.25 < better["ci_low"] < 0.5 < better["ci_high"] <= 0.75


@pytest.mark.parametrize("test", ["mcnemar", "bootstrap"])
def test_the_statistic_does_not_adopt_noise(test):
    """Two scaffolds equally good (independent 70% coins): adopted at most about alpha of the time."""
    rng = np.random.default_rng(0)
    adopted = sum(abtest.adoption_checks(rng.random(200) < 0.7, rng.random(200) < 0.7, None, None, test, 0.05, 400,
                                         0.0, seed=i)["passed"] for i in range(200))
    assert adopted <= 0.05 * 200 + 6  # binomial slack over 200 trials
    strong = rng.random(200) < 0.6
    planted = strong | (rng.random(200) < 0.5)  # the same answers plus about half the misses fixed
    assert abtest.adoption_checks(strong, planted, None, None, test, 0.05, 400, 0.0)["passed"]


def test_a_significant_gain_that_breaks_a_guardrail_is_refused():
    prod, cand = np.zeros(40, bool), np.ones(40, bool)
    checks = abtest.adoption_checks(prod, cand, 1.0, 0.75, "mcnemar", 0.05, 200, 0.0)
    assert not checks["passed"] and checks["p_value"] < 1e-6
    assert checks["reasons"] == ["guardrail pass rate drops from 100% to 75%"]


# -- specs and mutations ---------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, message", [
    ("{not json", "scaffold is not valid JSON"),
    ('{"steps": [{"type": "teleport"}]}', "step 1: unknown step type 'teleport'"),
    ('{"steps": [{"type": "retrieve", "kk": 3}]}', "step 1 (retrieve): unknown parameter(s) kk"),
    ('{"steps": [{"type": "retrieve", "k": 0}]}', "step 1 (retrieve): k = 0 is outside [1, 50]"),
    ('{"steps": [{"type": "abstain", "threshold": "high"}]}', "threshold must be a number"),
    ('{"steps": [{"type": "llm", "prompt": "no placeholder"}]}', "needs a {text} placeholder"),
    ('{"steps": []}', "needs 1 to 8 steps"),
    ('[1, 2]', 'a JSON object with a "steps" list'),
])
def test_bad_scaffolds_are_refused_with_one_line(raw, message):
    with pytest.raises(S.ScaffoldError, match=None) as err:
        S.parse(raw)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_mutations_give_valid_distinct_programs():
    rng = random.Random(0)
    seen = set()
    for name in S.BUILTINS:
        parent = S.builtin(name)
        for _ in range(60):
            child, what = mutate.mutate(parent, rng, llm=True)
            assert S.parse(child) == child and what
            assert S.digest(child) != S.digest(parent), what
            seen.add(what.split()[0].split(".")[0])
            parent = child
    assert {"insert", "remove", "swap", "llm"} <= seen  # structure, order and prompt text all mutate


def test_cli_refuses_a_malformed_scaffold_file(workspace, tmp_path, capsys, monkeypatch):
    from core import auth

    bad = tmp_path / "bad.json"
    bad.write_text('{"steps": [{"type": "classify"}, {"type": "teleport"}]}')
    auth.add_user(workspace.store, "alice", "approver", "alice-secret")
    monkeypatch.setenv("EVOLAB_PASSWORD", "alice-secret")
    assert main(["scaffolds", "add", "--workspace", str(workspace.root), "--file", str(bad), "--by", "alice"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: step 2: unknown step type 'teleport' " \
                                                               "(known: abstain, classify, llm, reflect, retrieve)"
    assert main(["scaffolds", "trial", "--workspace", str(workspace.root), "--candidate", "s1"]) == 1
    assert "no production model yet" in capsys.readouterr().err


# -- end to end on a trained workspace ------------------------------------------------------------------------
def _ab_on_every_selection_row(ws, **gate):
    """A/B-test on all the selection rows (the search shares them): the fixtures have few."""
    config = ws.config()
    config.scaffolds.search_fraction = 0.0
    for key, value in gate.items():
        setattr(config.gates.scaffold_adoption, key, value)
    ws.save_config(config)


def _cripple_production(ws) -> tuple[str, int]:
    """Production routes its least confident answers to a person, up to its eighth right one (most of the 12
    selection rows an A/B test reads): the default built-in then wins 8 discordant pairs, p = 2/2^8. (id, pairs)"""
    store = ws.store
    loaded = registry.load(ws, "v1")
    held = store.heldout("selection")
    rows = run_scaffold(S.builtin(S.DEFAULT), loaded, held["text"].tolist(), bank_for(ws, loaded))
    confidence = np.array([r["confidence"] for r in rows])
    correct = np.array([r["label"] for r in rows]) == held["label"].to_numpy()
    assert correct.sum() >= 8, "precondition: the baseline gets at least 8 of the 12 selection rows right"
    order = np.argsort(confidence)
    threshold = float(confidence[order][np.flatnonzero(np.cumsum(correct[order]) == 8)[0]]) + 1e-6
    crippled, _ = archive.add(store, {"name": "crippled", "steps": [{"type": "classify"},
                                                                    {"type": "abstain", "threshold": threshold}]},
                              "test")
    store.adopt_scaffold(crippled, "test", "planted production")
    return crippled, int((correct & (confidence < threshold)).sum())


@pytest.mark.slow
def test_planted_better_scaffold_is_adopted_and_predict_uses_it(scaffold_ws, tmp_path, capsys):
    ws = scaffold_ws
    _ab_on_every_selection_row(ws)
    store = ws.store
    ids = archive.ensure_builtins(store)
    crippled, lost = _cripple_production(ws)
    assert lost == 8
    outcome = cycle.run_scaffold_cycle(ws, candidate=ids[S.DEFAULT], progress=False)
    assert outcome.status == "done", outcome.message
    trial = store.scaffold_trial(outcome.cycle_id)
    checks = trial["result"]["checks"]
    assert checks["passed"] and checks["candidate_only"] == lost and checks["production_only"] == 0
    assert checks["p_value"] == pytest.approx(2 * 0.5 ** lost) and checks["ci_low"] > 0
    gate = store.gate_for(outcome.cycle_id, "scaffold_adoption")
    assert gate["status"] == "approved" and gate["decided_by"] == "auto"  # auto_under_thresholds, gain >= 0.01
    assert store.production_scaffold() == ids[S.DEFAULT] == scaffolds.load_production(ws)[0]
    assert "scaffold_adopted" in store.audit_entries()["action"].tolist()

    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_text("text\nmy card payment was declined\n")
    assert main(["predict", "--workspace", str(ws.root), "--input", str(src), "--output", str(out)]) == 0
    assert "1 predictions from v1 with scaffold analyze_plan_execute; 0 routed" in capsys.readouterr().out
    assert main(["scaffolds", "--workspace", str(ws.root), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["production"]["id"] == ids[S.DEFAULT] and info["trials"][0]["passed"] is True
    assert [a["scaffold_id"] for a in info["adoptions"]] == [crippled, ids[S.DEFAULT]]


def test_an_equal_scaffold_is_not_adopted(baseline_ws):
    """A no-op mutation answers exactly as production does: no discordant pair, no adoption, even auto-approved."""
    ws = baseline_ws
    _ab_on_every_selection_row(ws, policy="auto")
    store = ws.store
    production_id, production_spec = scaffolds.load_production(ws)
    noop = {"name": "noop", "steps": production_spec["steps"] + [{"type": "retrieve", "k": 3, "weight": 0.0}]}
    candidate, new = archive.add(store, noop, "test")
    assert new
    outcome = cycle.run_scaffold_cycle(ws, candidate=candidate, auto_approve=True, progress=False)
    assert outcome.status == "rejected"
    checks = store.scaffold_trial(outcome.cycle_id)["result"]["checks"]
    assert not checks["passed"] and checks["p_value"] == 1.0 and checks["gain"] == 0.0
    assert "not a significant gain" in checks["reasons"][0]
    assert store.gate_for(outcome.cycle_id, "scaffold_adoption")["status"] == "rejected"
    assert store.production_scaffold() is None and scaffolds.load_production(ws)[0] == production_id


class _ChatServer(ChatHandler):
    """An OpenAI-compatible endpoint that knows the held-out answers and gets the guardrail probe wrong."""
    answers: dict = {}
    requests: list = []

    def reply(self, body: dict) -> str:
        text = body["messages"][-1]["content"].split("\nText: ", 1)[1].split("\n", 1)[0]
        return _ChatServer.answers.get(text, "no idea")


def test_an_llm_prompt_scaffold_that_breaks_a_guardrail_is_refused(baseline_ws, tmp_path):
    ws = baseline_ws
    store = ws.store
    loaded = registry.load(ws, "v1")
    probe = "my card payment was declined at the shop"
    routed = run_scaffold(S.builtin(S.DEFAULT), loaded, [probe], bank_for(ws, loaded))[0]["label"]
    (tmp_path / "g.csv").write_text(f"text,expected_label,note\n{probe},{routed},declines must reach {routed}\n")
    from core.setup import add_guardrails

    add_guardrails(ws, tmp_path / "g.csv", "test")
    held = store.examples("heldout")
    wrong = next(label for label in store.labels() if label != routed)
    _ChatServer.answers = {**dict(zip(held["text"], held["label"])), probe: wrong}
    server = HTTPServer(("127.0.0.1", 0), _ChatServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = ws.config()
        config.scaffolds.search_fraction = 0.0
        config.scaffolds.llm = config.scaffolds.llm.model_copy(update={
            "enabled": True, "base_url": f"http://127.0.0.1:{server.server_port}/v1", "model": "tiny-chat"})
        ws.save_config(config)
        candidate, _ = archive.add(store, {"name": "ask_the_llm", "steps": [{"type": "classify"}, {"type": "llm"}]},
                                   "test")
        outcome = cycle.run_scaffold_cycle(ws, candidate=candidate, auto_approve=True, progress=False)
    finally:
        server.shutdown()
    prompts = [body["messages"][-1]["content"] for _, _, body in _ChatServer.requests]
    assert any(f"\nText: {probe}\n" in p and "Answer with the label name only" in p for p in prompts)
    result = store.scaffold_trial(outcome.cycle_id)["result"]
    assert result["candidate"]["accuracy"] == 1.0  # the LLM step answered every held-out text
    assert result["candidate"]["guardrail_pass"] == 0.0 and result["production"]["guardrail_pass"] == 1.0
    assert outcome.status == "rejected"
    assert "guardrail pass rate drops from 100% to 0%" in result["checks"]["reasons"]
    assert store.production_scaffold() is None


@pytest.mark.slow
def test_search_archive_and_lineage_survive_a_kill(baseline_ws, capsys, monkeypatch):
    ws = baseline_ws
    root = str(ws.root)
    killed = run_cli("scaffolds", "search", "--workspace", root, "--budget", "4", "--quiet",
                     env={"EVOLAB_FAULT": "scaffold_added_before_eval"})
    assert killed.returncode == -9
    store = ws.store
    before = store.scaffolds()
    assert len(before) == 4 and before["cycle_id"].notna().sum() == 1  # 3 built-ins, one child not yet scored
    cycle_id = int(store.open_cycle()["id"])
    assert store.cycle(cycle_id)["stage"] == "scaffold_search"

    resumed = run_cli("resume", "--workspace", root, "--quiet", check=True)
    assert f"cycle {cycle_id}" in resumed.stdout
    after = store.scaffolds()
    mine = after[after["cycle_id"] == cycle_id]
    assert len(mine) == 4  # the budget, not one more after the restart
    assert before.to_dict("records") == after.head(len(before)).to_dict("records")  # nothing rewritten
    evals = store.scaffold_evals("v1", "search")
    assert set(evals["scaffold_id"]) == set(after["id"])  # the one killed before scoring was scored on resume
    assert set(mine["parent_id"]) <= set(after["id"]) and mine["operator"].str.len().min() > 0
    trial = store.scaffold_trial(cycle_id)
    assert trial["candidate_id"] in set(after["id"]) and trial["result"]["checks"]["reasons"]
    assert store.cycle(cycle_id)["status"] in ("done", "rejected", "waiting")

    assert main(["scaffolds", "--workspace", root]) == 0
    shown = capsys.readouterr().out
    assert f"<- {mine['parent_id'].iloc[0]}" in shown and f"trial cycle {cycle_id}" in shown

    from core import auth
    from tests.conftest import APPROVER, PASSWORD
    from tests.test_dashboard import open_page

    auth.add_user(store, APPROVER, "viewer", PASSWORD)  # the dashboard opens on sign-in
    at = open_page(monkeypatch, ws.root, "scaffolds")
    assert len(at.get("plotly_chart")) == 2  # the lineage over search scores, and the A/B gain with its CI
    assert set(at.dataframe[0].value["Scaffold"]) == set(after["id"])


@pytest.mark.slow
def test_scaffold_trials_read_no_gate_row_and_each_draws_its_own_split(scaffold_ws, monkeypatch):
    """The gate rows grade models and nothing else: a spy on every held-out read of the store sees a scaffold
    search and its A/B test read selection rows only. Each trial deals those rows into search and A/B halves of
    its own, and scores the archive again on its half rather than reusing another trial's scores."""
    from core.scaffolds import search
    from core.store import Store

    ws = scaffold_ws
    store = ws.store
    gate_ids, selection_ids = set(store.heldout("gate")["id"]), set(store.heldout("selection")["id"])
    reads: list[tuple[str, tuple, set]] = []

    def spy(name: str, column: str) -> None:
        real = getattr(Store, name)

        def wrapped(self, *args, **kwargs):
            out = real(self, *args, **kwargs)
            reads.append((name, args, set(out[column]) if column in out else set()))
            return out
        monkeypatch.setattr(Store, name, wrapped)

    for name, column in (("heldout", "id"), ("examples", "id"), ("eval_results", "example_id")):
        spy(name, column)
    scored: list[frozenset] = []  # the rows each evaluator scores: a trial's search half, then its A/B half
    evaluator = search.evaluator

    def recording(ws_, version, examples):
        scored.append(frozenset(examples["id"]))
        return evaluator(ws_, version, examples)
    monkeypatch.setattr(stages, "evaluator", recording)
    monkeypatch.setattr(search, "evaluator", recording)

    trials = [cycle.run_scaffold_cycle(ws, budget=1, auto_approve=True, progress=False).cycle_id for _ in range(2)]
    assert [store.cycle(t)["status"] for t in trials] in (["done"] * 2, ["rejected"] * 2, ["done", "rejected"],
                                                          ["rejected", "done"])
    leaked = [(name, args) for name, args, ids in reads if ids & gate_ids]
    assert not leaked, f"a scaffold trial read gate rows: {leaked}"
    assert ("heldout", ("selection",), selection_ids) in reads
    assert len(scored) == 4
    for search_half, ab_half in (scored[:2], scored[2:]):
        assert search_half and ab_half and not search_half & ab_half and search_half | ab_half == selection_ids
    assert scored[0] != scored[2], "the second trial reused the first trial's split"
    for t in trials:
        assert store.scaffold_trial(t)["result"]["checks"]["rows"] == "selection"
    evals = store.scaffold_evals("v1", "search")
    assert {json.loads(d)["trial"] for d in evals["detail"]} == {trials[1]}  # the archive re-scored on its half
    assert set(evals["scaffold_id"]) == set(store.scaffolds()["id"])


def test_run_api_for_a_server(baseline_ws):
    ws = baseline_ws
    loaded = registry.load(ws, "v1")
    bank = bank_for(ws, loaded)
    assert bank_for(ws, loaded) is bank  # embedded once per model version
    scaffold_id, spec = scaffolds.load_production(ws)
    assert scaffold_id == S.DEFAULT and ws.store.scaffolds().empty  # reading never writes
    assert archive.ensure_builtins(ws.store)[S.DEFAULT] == S.DEFAULT == scaffolds.load_production(ws)[0]
    for name in S.BUILTINS:
        [row] = run_scaffold(S.builtin(name), loaded, ["where is my parcel"], bank)
        assert set(row) == {"label", "confidence", "abstained"} and row["label"] in loaded.labels
    batch = Batch(loaded, ["where is my parcel", "refund my double charge"], bank)
    everything = run_scaffold({"steps": [{"type": "classify"}, {"type": "abstain", "threshold": 1.0}]}, loaded,
                               batch.texts, bank)
    assert all(r["abstained"] for r in everything)
    with pytest.raises(S.ScaffoldError, match="no LLM is configured"):
        run_scaffold(S.parse({"steps": [{"type": "llm"}]}), loaded, ["hi there"], bank)


@pytest.mark.slow
def test_a_scaffold_gate_waits_for_a_person_on_the_dashboard(scaffold_ws, monkeypatch, capsys):
    from core import auth
    from tests.conftest import APPROVER, PASSWORD
    from tests.test_dashboard import open_page, texts

    ws = scaffold_ws
    _ab_on_every_selection_row(ws, policy="human")
    auth.add_user(ws.store, APPROVER, "approver", PASSWORD)
    _cripple_production(ws)
    outcome = cycle.run_scaffold_cycle(ws, candidate=S.DEFAULT, progress=False)
    assert outcome.status == "waiting" and "scaffold_adoption gate" in outcome.message

    at = open_page(monkeypatch, ws.root, "scaffolds")
    shown = texts(at)
    assert "Production scaffold" in shown and f"gate {outcome.gate_id}" in at.warning[0].value
    assert S.DEFAULT in set(at.dataframe[0].value["Scaffold"]) and "crippled" in set(at.dataframe[0].value["Name"])
    trials = at.dataframe[1].value
    assert trials["Candidate"].iloc[0] == S.DEFAULT and trials["95% CI of the gain"].iloc[0].startswith("+")
    assert len(at.get("plotly_chart")) == 1  # the gain with its interval (a trial without search scores no lineage)

    at = open_page(monkeypatch, ws.root, "approvals")
    shown = texts(at)
    assert f"Gate {outcome.gate_id} · cycle {outcome.cycle_id} · scaffold adoption" in shown
    assert f"Candidate scaffold {S.DEFAULT}" in shown and "McNemar p 0.0078" in shown
    assert "8 only the candidate got right, 0 only production" in shown

    monkeypatch.setenv("EVOLAB_PASSWORD", PASSWORD)
    assert main(["approve", "--workspace", str(ws.root), str(outcome.gate_id), "--by", APPROVER]) == 0
    assert cycle.resume(ws, progress=False).status == "done"
    assert ws.store.production_scaffold() == S.DEFAULT
    assert ws.store.scaffold_adoptions()["actor"].iloc[-1] == APPROVER
