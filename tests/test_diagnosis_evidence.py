"""What a diagnosis rests on (issue 28, point 1): besides the selection rows, people's label answers the version
never trained on and traffic the seed's neighbours label; never a gate row or a traffic-probe text; each finding
says how many rows of each source it rests on, and the Diagnosis page says it in words."""
from __future__ import annotations

import json

import pandas as pd

from core import cycle, diagnose
from core.curate.filters import normalize


def _answer_two_requests(store) -> list[str]:
    """Two pool texts asked of people in a cycle begun after the baseline's, answered with their data labels."""
    pool = store.unlabeled_pool().head(2)
    cid = store.create_cycle("evolve", "curate", None, "test")
    requests = pd.DataFrame({"example_id": pool["id"], "text": pool["text"], "score": [0.4, 0.3],
                             "uncertainty": [0.8, 0.7], "density": [0.5, 0.4], "suggestions": "[]"})
    store.save_samples(cid, pd.DataFrame(columns=["generator", "parent_id", "text", "label", "confidence",
                                                  "difficulty", "scores", "status", "reason"]), "data_review",
                       requests)
    labels = store.labels()
    for i, rid in enumerate(store.label_requests()["id"]):
        store.answer_label_request(int(rid), labels[i % len(labels)], "tester")
    return pool["text"].tolist()


def test_a_diagnosis_rests_on_label_answers_and_traffic_and_never_on_gate_rows(weak_baseline_ws):
    ws, store = weak_baseline_ws, weak_baseline_ws.store
    answered = _answer_two_requests(store)
    config = ws.config()
    # 6 seed rows a class: 3 neighbours, 2 of them agreeing, label a text
    config.diagnose.traffic_rows, config.diagnose.traffic_min_agreement, config.curate.knn_k = 100, 0.6, 3
    ws.save_config(config)
    version = store.alias("production")
    # the server logged a gate row's text, shouted: it is traffic, and still never evidence
    shouted = store.heldout("gate")["text"].iloc[0].upper()
    store.log_production(pd.DataFrame({"id": ["p1"], "at": [pd.Timestamp.now()], "text": [shouted],
                                       "label": [store.labels()[0]], "confidence": [0.9], "model_version": [version],
                                       "scaffold_version": [None], "latency_ms": [5.0]}), pd.DataFrame())
    assert shouted in set(store.unlabeled_pool()["text"])

    found = cycle.run_diagnosis(ws, 0, version, None)
    emap = found["internals"]["error_map"]
    rows = pd.DataFrame({k: emap[k] for k in ("text", "label", "predicted", "correct", "source")})
    selection = store.heldout("selection")
    counts = found["internals"]["rests_on"]
    assert counts["selection"] == len(selection)
    assert counts["label_answers"] == 2 and set(rows.loc[rows["source"] == "label_answers", "text"]) == set(answered)
    traffic = rows[rows["source"] == "traffic_view"]
    assert counts["traffic_view"] == len(traffic) > 0
    # the weak baseline (it reads 8 tokens) disagrees with the seed's neighbours on some traffic
    assert (~traffic["correct"].astype(bool)).any(), traffic
    assert (traffic["correct"] == (traffic["predicted"] == traffic["label"])).all()
    assert set(traffic["text"]) <= set(store.unlabeled_pool()["text"]) - {shouted}
    # no gate row, no probe text is evidence
    guarded = {normalize(t) for t in pd.concat([store.heldout("gate")["text"],
                                                store.traffic_probe()["text"]])}
    assert guarded and not guarded & {normalize(t) for t in rows.loc[rows["source"] != "selection", "text"]}

    findings = found["findings"]
    details = [json.loads(d) for d in findings["detail"]]
    on_traffic = [d for k, d in zip(findings["kind"], details) if "traffic_view" in d.get("rests_on", {})]
    assert on_traffic, details
    for kind, d in zip(findings["kind"], details):
        if kind == "confusion_pair":  # a pair rests on exactly the errors it counts
            assert sum(d["rests_on"].values()) == d["n"], d
        if kind == "weak_class":
            assert sum(d["rests_on"].values()) == d["support"], d
    # an error cluster's member texts reach the curation as they were diagnosed, traffic ones included
    clusters = [d for k, d in zip(findings["kind"], details) if k == "error_cluster"]
    texts = diagnose.cluster_texts(findings, selection)
    assert [[m["text"] for m in d["members"]] for d in clusters] == texts

    from app.queries.diagnosis import rests_on_words

    assert rests_on_words(on_traffic[0]["rests_on"]).count("traffic text") == 1

    config.diagnose.traffic_rows = 0
    ws.save_config(config)
    alone = cycle.run_diagnosis(ws, 0, version, None)["internals"]["rests_on"]
    assert alone == {"selection": len(selection), "label_answers": 2}
