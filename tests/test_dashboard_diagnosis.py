"""The Diagnosis and Scaffolds pages for people (issue 18, points 2 and 3): readable tables, trend badges,
an error map coloured by error cluster, and an empty scaffold archive that says how to start a search."""
from __future__ import annotations

import json
import shlex

import pandas as pd
import pytest

from app import queries
from core.cli import build_parser
from core.diagnose.errors import rank
from core.scaffolds import archive
from tests.test_dashboard import open_page, texts, unreadable


def test_finding_trends_compare_with_the_previous_diagnosis_when_none_is_stored():
    """A diagnosis stored before trends existed: (kind, subject) against the previous one."""
    def rows(*pairs):
        return pd.DataFrame([{"rank": i + 1, "kind": k, "subject": s, "severity": 1.0, "detail": "{}",
                              "action": "a"} for i, (k, s) in enumerate(pairs)])

    previous = rows(("weak_class", "a"), ("confusion_pair", "a -> b"))
    now = queries.finding_trends(rows(("weak_class", "a"), ("weak_class", "c")), previous)
    assert list(zip(now["subject"], now["trend"])) == [("a", "persisting"), ("c", "new"), ("a -> b", "fixed")]
    assert list(now["rank"]) == [1, 2, 3]
    # a stored trend (core.diagnose's, which matches clusters on shared terms) wins over the comparison
    stored = rows(("weak_class", "c")).assign(detail=json.dumps({"trend": "persisting"}))
    assert list(queries.finding_trends(stored, previous)["trend"]) == ["persisting"]


@pytest.mark.parametrize("page", ["diagnosis", "scaffolds"])
def test_pages_show_nothing_unreadable(monkeypatch, _pending_template, page):
    root, _ = _pending_template
    at = open_page(monkeypatch, root, page)
    assert unreadable(at) == []
    if page == "diagnosis":
        findings = at.dataframe[0].value
        assert list(findings.columns[:3]) == ["Rank", "Trend", "Type"]
        assert set(findings["Trend"]) == {"● new"}  # the baseline had no diagnosis: everything is new
        assert "Confused pair" in set(findings["Type"])


def test_error_map_colours_each_cluster_and_opens_its_examples(monkeypatch, pending_ws):
    """Two error clusters (one persisting), and a finding the previous diagnosis had that is fixed now."""
    ws, _ = pending_ws
    store = ws.store
    wrong = store.eval_results("v1", "selection").query("not correct")
    assert len(wrong) >= 2
    internals = store.diagnosis_internals(2)
    em = internals["error_map"]
    at_ = dict(zip(em["example_ids"], zip(em["x"], em["y"])))
    findings = []
    for terms, (_, row) in zip([["billed", "renews"], ["visa", "secure"]], wrong.head(2).iterrows()):
        x, y = at_[row["example_id"]]
        findings.append({"kind": "error_cluster", "subject": " / ".join(terms), "severity": 1.0,
                         "key": "cluster:" + "|".join(sorted(terms)), "action": "generate samples like these",
                         "detail": {"terms": terms, "labels": {row["label"]: 1}, "examples": [row["text"]],
                                    "members": [{"example_id": int(row["example_id"]), "x": x, "y": y}]}})
    # the previous diagnosis (rank() reads it as keys) had the visa cluster and a weak class now gone
    ranked = rank(findings, {"cluster:secure|visa", "class:account_access"})
    store.save_diagnosis(2, ranked, None, store.attributions(2).drop(columns=["text"]), internals, "v1")

    at = open_page(monkeypatch, ws.root, "diagnosis")
    assert unreadable(at) == []
    table = at.dataframe[0].value
    assert dict(zip(table["Finding"], table["Trend"])) == {
        "billed / renews": "● new", "visa / secure": "↻ persisting", "account_access": "✓ fixed"}

    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    traces = {t["name"]: t for t in figure["data"]}
    assert set(traces) == {"cluster: billed / renews", "cluster: visa / secure", "correct"}
    assert traces["cluster: billed / renews"]["customdata"][0][0] == "billed, renews"  # the terms, on hover
    assert "terms: %{customdata[0]}" in traces["cluster: visa / secure"]["hovertemplate"]
    assert len({t["marker"]["color"] for t in traces.values()}) == 3

    radio = at.radio(key="error_cluster")
    assert radio.options == ["cluster: billed / renews", "cluster: visa / secure"]
    radio.set_value("visa / secure").run()
    second = wrong.iloc[1]
    shown = texts(at)
    assert f"true **{second['label']}** · predicted **{second['predicted']}**" in shown
    assert '<span style="background: rgba(' in shown  # Captum's token colours: the example has an attribution


def test_empty_scaffold_archive_says_what_a_search_does_and_how_to_start_one(monkeypatch, _pending_template):
    root, _ = _pending_template
    at = open_page(monkeypatch, root, "scaffolds")
    info = at.info[0].value
    assert "A/B-tests" in info and "retrieve" in info and "scaffold adoption gate" in info
    command = f"python -m core scaffolds search --workspace {root}"
    assert command in info
    args = build_parser().parse_args(shlex.split(command)[3:])  # a command the CLI accepts
    assert (args.command, args.action, args.workspace) == ("scaffolds", "search", str(root))


def test_scaffold_tables_are_readable(monkeypatch, pending_ws):
    """An archive with scores, a finished A/B trial and an adoption, as a search leaves them."""
    ws, _ = pending_ws
    store = ws.store
    store.abandon_cycle(2, "test", "a scaffold cycle needs the model cycle closed")
    ids = archive.ensure_builtins(store, "test")
    first, second = sorted(ids.values())[:2]
    child, _ = archive.add(store, {"steps": [{"type": "classify"}, {"type": "retrieve"}]}, "engine", first,
                           "insert retrieve at 2", cycle_id=2)
    store.save_scaffold_eval(first, "v1", "search", {"n": 40, "accuracy": 0.8, "coverage": 1.0,
                                                     "selective_accuracy": 0.8, "guardrail_pass": 1.0})
    cid = store.create_scaffold_cycle("ab_test", "v1", 4, first, second, "engine")
    store.save_trial_result(cid, {"production": {"accuracy": 0.8}, "candidate": {"accuracy": 0.825},
                                  "checks": {"gain": 0.025, "ci_low": -0.01, "ci_high": 0.06, "p_value": 0.2,
                                             "passed": False, "reasons": ["gain not significant"]}}, "gate")
    store.adopt_scaffold(second, "test", "tried by hand")
    at = open_page(monkeypatch, ws.root, "scaffolds")
    assert unreadable(at) == []
    archive_table, trials, adoptions = (d.value for d in at.dataframe)
    assert "80.00%" in set(archive_table["Search accuracy"]) and "–" in set(archive_table["Search accuracy"])
    made_by = dict(zip(archive_table["Scaffold"], archive_table["Made by"]))
    assert made_by[child] == f"from {first}: insert retrieve at 2" and made_by[first] == "built-in"
    assert trials["Gain"].iloc[0] == "+2.50 pts" and trials["95% CI of the gain"].iloc[0] == "-1.00 to +6.00 pts"
    assert adoptions["Scaffold"].iloc[0] == second and "Times are UTC." in texts(at)
