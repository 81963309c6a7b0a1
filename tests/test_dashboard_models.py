"""Training and Models pages for people (issue 18, points 2 and 3): no raw store names, loss and accuracy in
stacked panels on one step axis with the doctor's interventions readable on hover, the lineage as a graph with
the aliases written on it, and a version's per-class recall."""
from __future__ import annotations

import json

from tests.test_dashboard import open_page, unreadable

EVENT = "loss plateaued: learning rate halved"


def array(value) -> list:
    """A trace's values: Plotly writes numeric arrays as base64 typed arrays ({"dtype": "i4", "bdata": ...})."""
    if isinstance(value, dict) and "bdata" in value:
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"])).tolist()
    return list(value)


def spec(at, key: str | None = None, index: int = 0) -> dict:
    charts = at.get("plotly_chart")
    if key is not None:
        charts = [c for c in charts if c.proto.id and key in c.proto.id] or charts
    return json.loads(charts[index].proto.spec)


def test_training_stacks_loss_over_accuracy_and_marks_the_doctor(monkeypatch, pending_ws):
    ws, _ = pending_ws
    ws.store.record_train_event("cycle_2", 3, "plateau", EVENT)
    at = open_page(monkeypatch, ws.root, "training")
    assert unreadable(at) == []
    figure = spec(at)
    layout = figure["layout"]
    # two panels, one above the other, on one step axis
    assert {"yaxis", "yaxis2"} <= set(layout) and {"xaxis", "xaxis2"} <= set(layout)
    assert layout["xaxis"].get("matches") == "x2" or layout["xaxis2"].get("matches") == "x"
    assert min(layout["yaxis"]["domain"]) > max(layout["yaxis2"]["domain"])
    names = {t.get("name"): t for t in figure["data"]}
    assert {"Training loss", "Validation loss", "Validation accuracy"} <= set(names)
    assert names["Validation accuracy"]["yaxis"] == "y2" and names["Training loss"].get("yaxis", "y") == "y"
    # the intervention: a hover that carries the doctor's words, and a line through both panels
    marker = names["Doctor's interventions"]
    assert array(marker["x"]) == [3] and EVENT in json.dumps(marker["customdata"]) and "Plateau" in json.dumps(marker)
    lines = [s for s in layout.get("shapes", []) if s.get("x0") == 3]
    assert {s["yref"].split(" ")[0] for s in lines} == {"y", "y2"}
    table = at.dataframe[0].value
    assert list(table["Intervention"]) == ["Plateau"] and list(table["What the doctor found or did"]) == [EVENT]
    assert any("read at" in c.value and "UTC" in c.value for c in at.caption)
    # runs compared under the names a person reads
    compare = spec(at, index=1)
    assert compare["layout"]["yaxis"]["title"]["text"] == "Validation accuracy"
    assert [t["name"] for t in compare["data"]] == ["cycle_1", "cycle_2"]


def test_models_draws_the_lineage_with_aliases_and_a_versions_recall(monkeypatch, pending_ws):
    ws, _ = pending_ws
    at = open_page(monkeypatch, ws.root, "models")
    assert unreadable(at) == []
    lineage = spec(at)
    nodes = next(t for t in lineage["data"] if t.get("name") == "versions")
    labels = dict(zip(array(nodes["x"]), nodes["text"]))
    assert "production" in labels[1] and "v1" in labels[1]
    assert "candidate" in labels[2] and "v2" in labels[2] and "production" not in labels[2]
    arrows = [(a["x"], a["ax"]) for a in lineage["layout"]["annotations"] if a.get("showarrow")]
    assert arrows == [(1, 2)]  # v2 -> its parent v1
    hover = dict(zip(array(nodes["x"]), nodes["hovertext"]))
    assert "promotion gate" in hover[2] and "pending" in hover[2] and "cycle 2" in hover[2]
    assert "approved by auto" in hover[1]

    versions = at.dataframe[0].value
    assert list(versions["Version"]) == ["v2", "v1"]
    synthetic = ws.store.version("v2")["lineage"]["rows_by_source"]["synthetic"]
    assert synthetic and list(versions["From synthetic"]) == [f"{synthetic:,}", "0"]
    assert versions["Gate estimate"].str.endswith("%").all()

    # v2 is shown first: its recall by class, worst first, and the drift report of cycle 2
    recall = next(d.value for d in at.dataframe if "Recall" in d.value.columns)
    per_class = ws.store.evaluation("v2")["per_class"]
    assert sorted(recall["Class"]) == sorted(per_class)
    assert [float(r.rstrip("%")) for r in recall["Recall"]] == sorted(round(100 * per_class[c]["recall"], 2)
                                                                     for c in recall["Class"])
    assert any("Drift of v2 from v1 (cycle 2)" in e.label for e in at.expander)

    at.selectbox(key="detail_version").select("v1").run()
    assert not at.exception and unreadable(at) == []
    recall = next(d.value for d in at.dataframe if "Recall" in d.value.columns)
    worst = min(ws.store.evaluation("v1")["per_class"].items(), key=lambda kv: (kv[1]["recall"], kv[0]))
    assert recall["Class"].iloc[0] == worst[0]
    assert "No drift report for v1" in "\n".join(c.value for c in at.caption)


def test_a_branch_gets_its_own_row_and_an_unevaluated_version_reads(monkeypatch, pending_ws):
    """v3 trained from v1 beside v2 (registered straight in the store: no training), not evaluated yet and
    with an old lineage that lacks rows_by_source: a second row in the graph, '–' and words, never an error."""
    ws, _ = pending_ws
    ws.store.register_version("v3", 3, None, "v1", "bundled:all-MiniLM-L6-v2", "models/v3", {}, {"parent": "v1"},
                              "engine")
    at = open_page(monkeypatch, ws.root, "models")
    assert unreadable(at) == []
    lineage = spec(at)
    nodes = next(t for t in lineage["data"] if t.get("name") == "versions")
    rows = dict(zip(array(nodes["x"]), array(nodes["y"])))
    assert rows[1] == rows[2] != rows[3]
    arrows = sorted((a["x"], a["ax"]) for a in lineage["layout"]["annotations"] if a.get("showarrow"))
    assert arrows == [(1, 2), (1, 3)]
    assert "candidate" in dict(zip(array(nodes["x"]), nodes["text"]))[3]
    versions = at.dataframe[0].value.set_index("Version")
    assert versions.loc["v3", "From seed"] == "–" and versions.loc["v1", "From synthetic"] == "0"
    assert at.selectbox(key="detail_version").value == "v3"
    shown = "\n".join(c.value for c in at.caption)
    assert "Not evaluated on the gate rows yet" in shown and "No drift report for v3" in shown
