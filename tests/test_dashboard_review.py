"""The review pages (Approvals, Synthetic data, Audit) read as tables for people (issue 18, point 2): headings a
person reads, numbers and times formatted, empty cells as "–", long texts whole in a detail panel."""
from __future__ import annotations

import pytest

from tests.test_dashboard import open_page, texts, unreadable


def table_with(at, *headings: str):
    """The first table on the page showing every one of these headings."""
    found = [d.value for d in at.dataframe if set(headings) <= set(d.value.columns)]
    assert found, f"no table with {headings}: {[list(d.value.columns) for d in at.dataframe]}"
    return found[0]


def select_row(at, key: str, row: int):
    """What a click on a row's box does: the table's selection state, then a rerun."""
    at.session_state[key] = {"selection": {"rows": [row], "columns": [], "cells": []}}
    return at.run()


@pytest.mark.parametrize("page", ["approvals", "synthetic_data", "audit"])
def test_review_pages_show_no_store_column_and_no_empty_marker(monkeypatch, pending_ws, page):
    ws, gate_id = pending_ws
    at = open_page(monkeypatch, ws.root, page)
    assert at.dataframe and unreadable(at) == []
    assert "Times are UTC." in texts(at)
    if page == "approvals":
        recall = table_with(at, "Class", "Support", "Production recall", "Candidate recall", "Change")
        assert len(recall) == 4 and recall["Production recall"].str.endswith("%").all()
        assert table_with(at, "Class", "Broken", "Fixed", "Adjusted p")["Recall after"].str.endswith("%").all()
        decided = table_with(at, "Gate", "Decided by", "Decided at", "Automatic")
        assert set(decided["Automatic"]) == {"yes"} and decided["Decided at"].str.fullmatch(
            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d").all()
        assert len(table_with(at, "Text", "True label", "Production said", "Candidate says"))  # the cycle's drift
    elif page == "synthetic_data":
        samples = table_with(at, "Sample", "Text", "Label", "Generator", "Status", "Difficulty", "Reason",
                             "Cycle", "Model score")
        assert len(samples) == min(50, len(ws.store.samples())) > 0  # a page of 50 rows, the default
        assert samples["Created at"].str.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d").all()
        assert len(table_with(at, "Generator", "Generated", "Kept"))  # the yield report, unpacked
    else:
        log = table_with(at, "Seq", "At", "Actor", "Action", "Target", "Detail")
        assert "gate opened" in set(log["Action"]) and list(log["Seq"])[:1] == [str(len(log))]  # newest first
        assert "Chain verified" in at.success[0].value
        select_row(at, "audit_table", 0)  # the newest entry, whole: one row per field of its detail
        assert f"Entry {len(log)}" in texts(at) and len(table_with(at, "Field", "Value"))
        assert unreadable(at) == []


def test_a_selected_sample_shows_its_whole_text(monkeypatch, pending_ws):
    ws, _ = pending_ws
    samples = ws.store.samples().set_index("id")
    at = open_page(monkeypatch, ws.root, "synthetic_data")
    assert not at.text  # no panel before a row is selected
    shown = table_with(at, "Sample", "Text")
    longest = int(shown["Text"].str.len().idxmax())
    select_row(at, "samples_table", longest)
    assert not at.exception, [e.value for e in at.exception]
    sample = samples.loc[int(shown["Sample"].iloc[longest])]
    assert [t.value for t in at.text] == [sample["text"]]
    assert f"Sample {shown['Sample'].iloc[longest]}" in texts(at) and sample["reason"] in texts(at)
    assert unreadable(at) == []


def test_a_gate_links_to_its_cycles_samples(monkeypatch, pending_ws):
    """The Approvals page's link carries the gate's cycle; the Synthetic data page opens on it once."""
    ws, gate_id = pending_ws
    cycle = ws.store.gate(gate_id)["cycle_id"]
    at = open_page(monkeypatch, ws.root, "approvals")
    link = next(p for p in at.get("page_link") if "samples" in p.proto.label)
    assert link.proto.label == f"Read the samples of cycle {cycle}" and f"cycle={cycle}" in link.proto.query_string
    at.query_params["cycle"] = str(cycle)
    at.switch_page("../pages/synthetic_data.py").run()
    assert at.selectbox(key="samples_cycle").value == cycle
    assert f"{len(ws.store.samples(cycle_id=cycle))} matching samples" in texts(at)
