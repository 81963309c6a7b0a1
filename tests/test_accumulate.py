"""Verified data accumulates: what earlier cycles kept, and people did not reject, trains every later candidate with
its provenance and a weight (core/curate/replay.py, `train.accumulate*`). Real DuckDB, real training.

Cycle 2 runs once per module on the trained baseline; each test copies that workspace and runs cycle 3 with the class
cap of one kept sample, so most of what cycle 2 kept can only reach cycle 3's training set by replay."""
from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from conftest import APPROVER, PASSWORD, approve_as, built_once, copy_workspace
from test_dashboard import open_page, texts
from app import queries
from core import auth, cycle
from core.actions import review_samples
from core.curate import filters, replay
from core.store import utcnow

KEPT = ["kept", "approved"]


@pytest.fixture(scope="module")
def _after_one_cycle(tmp_path_factory, _baseline_template):
    """The trained baseline with evolution cycle 2 ended (autonomous), its samples kept and trained on."""
    def build(folder) -> list:
        ws = copy_workspace(_baseline_template, folder / "ws")
        outcome = cycle.evolve(ws, cycles=1, progress=False)[-1]
        assert outcome.status in ("done", "rejected") and \
            ws.store.gate_for(outcome.cycle_id, "data_review")["status"] == "approved"
        assert len(kept(ws, outcome.cycle_id)) >= 8
        return [str(ws.root), outcome.cycle_id]
    root, first = built_once(tmp_path_factory, "accumulate", build)
    return Path(root), first


@pytest.fixture
def after_one_cycle(tmp_path, _after_one_cycle):
    root, first = _after_one_cycle
    ws = copy_workspace(root, tmp_path / "ws")
    config = ws.config()
    config.curate.max_per_class = 1  # cycle 3 keeps one sample per class of its own
    ws.save_config(config)
    return ws, first


def kept(ws, cycle_id: int) -> pd.DataFrame:
    samples = ws.store.samples(cycle_id)
    return samples[samples["status"].isin(KEPT)]


def training_set(ws, cycle_id: int) -> pd.DataFrame:
    return pd.read_parquet(ws.checkpoints / f"cycle_{cycle_id}" / "train.parquet")


def lineage(ws, cycle_id: int) -> dict:
    versions = ws.store.versions()
    return json.loads(versions.loc[versions["cycle_id"] == cycle_id, "lineage"].iloc[0])


@pytest.mark.slow
def test_earlier_kept_samples_are_replayed_with_provenance(after_one_cycle, monkeypatch):
    ws, first = after_one_cycle
    second = cycle.evolve(ws, cycles=1, progress=False)[-1].cycle_id
    data = training_set(ws, second)
    replayed = data[data["source"] == "replayed"]
    earlier = kept(ws, first).set_index("id")
    own = set(kept(ws, second)["text"])
    assert len(replayed) >= 4
    # Every sample cycle 2 kept trains in cycle 3, once: as cycle 3's own sample or replayed from cycle 2.
    assert set(earlier["text"]) <= own | set(replayed["text"])
    assert not data["text"].duplicated().any()
    assert not set(replayed["text"]) & own
    # Each replayed row names the sample it is: its id, the cycle that kept it, its generator, text and label.
    assert set(replayed["source_cycle"]) == {first}
    source = earlier.loc[replayed["sample_id"].astype(int)]
    assert source["text"].tolist() == replayed["text"].tolist()
    assert source["label"].tolist() == replayed["label"].tolist()
    assert source["generator"].tolist() == replayed["generator"].tolist()
    # ...and weighs half of what it weighed when its own cycle trained on it (train.accumulated_weight = 0.5).
    then = training_set(ws, first).dropna(subset=["sample_id"]).set_index("sample_id")["weight"]
    assert replayed["weight"].tolist() == pytest.approx((0.5 * then.loc[replayed["sample_id"]]).tolist())
    # The version's lineage records what was replayed and from where.
    record = lineage(ws, second)["replayed"]
    assert record["enabled"] and record["weight"] == 0.5
    assert record["rows"] == len(replayed) and record["by_cycle"] == {str(first): len(replayed)}
    assert sorted(record["sample_ids"]) == sorted(replayed["sample_id"].astype(int))
    assert lineage(ws, second)["rows_by_source"]["replayed"] == len(replayed)
    # Nothing replayed is a held-out or traffic-probe text.
    protected = filters.protected(ws.store.examples("heldout"), ws.store.traffic_probe())
    assert not set(replayed["text"]) & set(protected["text"])
    # The training page says it under the run.
    auth.add_user(ws.store, APPROVER, "approver", PASSWORD)
    at = open_page(monkeypatch, ws.root, "training")
    assert at.selectbox[0].value == f"cycle_{second}"
    assert f"Replayed {len(replayed)} samples kept in earlier cycles (cycle {first}: {len(replayed)})" in texts(at)


@pytest.mark.slow
def test_people_reviews_of_earlier_samples_govern_replay(after_one_cycle):
    """A sample a person rejects, even after its cycle trained on it, never trains again; one they relabel trains
    with their label. Their review is read when the training set is built: here made while cycle 3 waits at its
    data review, after its curation ran."""
    ws, first = after_one_cycle
    auth.add_user(ws.store, APPROVER, "approver", PASSWORD)
    config = ws.config()
    config.gates.data_review.policy = "human"
    ws.save_config(config)
    waiting = cycle.evolve(ws, cycles=1, progress=False)[-1]
    assert waiting.status == "waiting" and waiting.stage == "data_review"
    second = waiting.cycle_id
    candidates = kept(ws, first)
    candidates = candidates[~candidates["text"].isin(kept(ws, second)["text"])]
    rejected, relabelled = candidates.iloc[0], candidates.iloc[1]
    new_label = next(label for label in ws.store.labels() if label != relabelled["label"])
    who = auth.authenticate(ws.store, APPROVER, PASSWORD, "samples")
    review_samples(ws, who, [int(rejected["id"])], "reject", comment="not a billing question")
    review_samples(ws, who, [int(relabelled["id"])], "relabel", label=new_label)
    approve_as(ws, waiting.gate_id)
    cycle.resume(ws, progress=False)

    data = training_set(ws, second)
    replayed = data[data["source"] == "replayed"]
    assert len(replayed) >= 3  # the rest of what cycle 2 kept is replayed...
    assert rejected["text"] not in set(data["text"])  # ...never the rejected sample
    row = data[data["text"] == relabelled["text"]]
    assert row[["label", "source", "sample_id"]].values.tolist() == [[new_label, "replayed", relabelled["id"]]]
    assert row["weight"].iloc[0] == pytest.approx(0.5)  # a person's label counts 1, times the replay weight
    assert int(rejected["id"]) not in lineage(ws, second)["replayed"]["sample_ids"]


@pytest.mark.slow
def test_accumulate_off_trains_on_the_seed_and_this_cycles_samples_only(after_one_cycle):
    ws, first = after_one_cycle
    config = ws.config()
    config.train.accumulate = False
    ws.save_config(config)
    second = cycle.evolve(ws, cycles=1, progress=False)[-1].cycle_id
    data = training_set(ws, second)
    own = kept(ws, second)
    seed = ws.store.seed_examples(before_cycle=second)
    assert sorted(data["text"]) == sorted([*seed["text"], *own["text"]])
    assert set(data["source"]) <= {"seed", "human_label", "synthetic", "feedback"}
    assert set(data["source_cycle"].dropna()) <= {second}
    assert lineage(ws, second)["replayed"] == {"rows": 0, "by_cycle": {}, "by_generator": {}, "sample_ids": [],
                                               "enabled": False, "weight": 0.5}
    assert "not replayed" in queries.replayed(str(ws.root), f"cycle_{second}")


def test_select_keeps_the_newest_copy_caps_each_class_and_guards_protected_texts():
    earlier = pd.DataFrame({
        "id": [1, 2, 3, 4, 5, 6, 7],
        "cycle_id": [2, 2, 3, 3, 3, 4, 4],
        "generator": ["self_label", "templates", "self_label", "templates", "llm", "counterfactual", "llm"],
        "text": ["where is my parcel", "card declined twice", "Where is  my PARCEL", "reset my password",
                 "what is this charge", "my card got declined twice", "the parcel never came"],
        "label": ["shipping_delay", "payment_processing_error", "shipping_delay", "account_access",
                  "billing_question", "payment_processing_error", "shipping_delay"],
        "status": "kept", "scores": "{}"})
    protected = pd.DataFrame({"text": ["What is this  charge"], "kind": ["traffic probe"]})
    chosen = replay.select(earlier, ["reset my password"], protected, per_class=1, similarity=0.9)
    # 1 is an older copy of 3; 4 is already in the training set; 5 copies a probe text; shipping_delay's cap
    # keeps the newest cycle's (7) over 3, and payment_processing_error's the newest (6) over 2.
    assert chosen["id"].tolist() == [6, 7]
    assert replay.select(earlier, [], protected.iloc[:0], per_class=10, similarity=0.9)["id"].tolist() \
        == [2, 3, 4, 5, 6, 7]


def ended_cycle(store, rows: list[tuple[str, str, str]], data_approved: bool = True) -> int:
    """A cycle that kept these samples (text, label, generator), its data review decided, then ended: no training."""
    cid = store.create_cycle("evolve", "curate", "v1", "engine")
    texts, labels, generators = map(list, zip(*rows))
    store.save_samples(cid, pd.DataFrame({
        "generator": generators, "parent_id": pd.array([None] * len(rows), dtype="Int64"), "text": texts,
        "label": labels, "confidence": 0.9, "difficulty": 1, "scores": "{}", "status": "kept",
        "reason": "verifiers agree"}), "data_review")
    gate = store.open_gate(cid, "data_review", "auto", {}, utcnow() + timedelta(hours=1))
    store.decide_gate(gate, data_approved, "auto", "", True)
    store.fail_cycle(cid, "ended by the test", "engine")
    return cid


def sample_ids(store) -> dict:
    samples = store.samples()
    return {(c, t): int(i) for c, t, i in zip(samples["cycle_id"], samples["text"], samples["id"])}


def test_the_store_applies_peoples_latest_decision_on_a_text_across_cycles(workspace):
    """A person's decision on one copy of a text governs every copy: a text rejected in a later cycle never replays
    from an earlier one, a text relabelled in an earlier cycle replays from a later one with their label. A cycle
    whose data review rejected its data replays nothing."""
    store = workspace.store
    a, b = store.labels()[:2]
    one = ended_cycle(store, [("kept twice", a, "templates"), ("relabelled", a, "templates"),
                              ("only in one", a, "llm")])
    two = ended_cycle(store, [("kept twice", a, "templates"), ("relabelled", a, "llm"), ("only in two", a, "llm")])
    ended_cycle(store, [("data review said no", a, "llm")], data_approved=False)
    ids = sample_ids(store)
    store.review_samples([ids[(two, "kept twice")]], "reject", "alice")
    store.review_samples([ids[(one, "relabelled")]], "relabel", "alice", label=b)

    later = store.replayable_samples(before_cycle=two + 2)
    assert later[["cycle_id", "text", "label", "generator"]].values.tolist() == [
        [one, "only in one", a, "llm"], [two, "relabelled", b, "llm"], [two, "only in two", a, "llm"]]
    assert later.set_index("text").loc["relabelled", "status"] == "approved"
    assert store.replayable_samples(before_cycle=two)["text"].tolist() == ["relabelled", "only in one"]


def test_a_rejections_lesson_binds_replay_as_it_binds_curation(workspace):
    """What a rejected candidate taught the next curation (core.lessons.Remedy) holds for replay too: a held-back
    label replays only what a person approved, a generator sat out replays nothing, the cap shrinks."""
    from core.lessons import Remedy

    store = workspace.store
    a, b = store.labels()[:2]
    one = ended_cycle(store, [("planted a", a, "templates"), ("approved a", a, "templates"),
                              ("traffic b", b, "self_label"), ("more traffic b", b, "self_label")])
    store.review_samples([sample_ids(store)[(one, "approved a")]], "approve", "alice")

    def replayed(remedy: Remedy) -> list[str]:
        return cycle._replayed(workspace, {"id": one + 1}, [], remedy)["text"].tolist()

    assert replayed(Remedy()) == ["planted a", "approved a", "traffic b", "more traffic b"]
    assert replayed(Remedy(hold_back={a})) == ["approved a", "traffic b", "more traffic b"]
    assert replayed(Remedy(strict=True)) == ["approved a"]
    assert replayed(Remedy(skip_generators={"self_label"})) == ["planted a", "approved a"]
    config = workspace.config()
    config.train.accumulated_per_class = 2
    workspace.save_config(config)
    assert replayed(Remedy(cap_factor=0.5)) == ["approved a", "traffic b"]  # a person's approval first
