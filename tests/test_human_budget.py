"""The human budget (curate.ask_humans_per_cycle): curation asks people about the pool texts where the views
disagree most, the answers go through one audited action, and they count as seed from the next cycle."""
import json

import duckdb
import pandas as pd
import pytest

from core import auth, cycle, registry
from core.cli import main
from core.curate import ask
from core.curate.registry import Context
from core.store import MIGRATIONS, SCHEMA_VERSION, Store
from tests.conftest import APPROVER, DATA, PASSWORD, VIEWER, VIEWER_PASSWORD

LABELER, LABELER_PASSWORD = "lara", "lara-secret"
# Each mixes the two intents the clear texts below keep apart: the views cannot agree on one label.
AMBIGUOUS = ["my package has not arrived and I cannot log in to my account",
             "locked out of my account, and where is my parcel?",
             "can't sign in to track my order, the delivery is late",
             "password reset fails and the package is a week late"]
# Uncertain too, but like nothing else in the pool: not worth a person's label.
OUTLIERS = ["zxqv blorp wibble", "purple elephants dance quietly at midnight"]


def test_the_texts_asked_about_are_the_ambiguous_ones_not_outliers(baseline_ws):
    labeled = pd.read_csv(DATA / "tickets_labeled.csv")
    clear = labeled[labeled["label"].isin(["shipping_delay", "account_access"])].groupby("label").tail(6)["text"]
    texts = [*clear, *AMBIGUOUS, *OUTLIERS]
    store = baseline_ws.store
    ctx = Context(loaded=registry.load_alias(baseline_ws), seed=store.examples("seed"),
                  pool=pd.DataFrame({"id": range(1000, 1000 + len(texts)), "text": texts}), pairs=[],
                  favoured=set(), cfg=baseline_ws.config().curate, root=baseline_ws.root)
    chosen = ask.choose(ctx, 2)
    assert len(chosen) == 2 and set(chosen["text"]) <= set(AMBIGUOUS)
    assert chosen["score"].is_monotonic_decreasing
    assert (chosen["score"] - chosen["uncertainty"] * chosen["density"]).abs().max() < 1e-9
    assert chosen["example_id"].tolist() == [1000 + texts.index(t) for t in chosen["text"]]
    hints = [h["label"] for h in json.loads(chosen["suggestions"].iloc[0])]
    assert len(hints) == 3 and set(hints[:2]) == {"shipping_delay", "account_access"}
    # the outliers are more uncertain than most clear texts; density is what keeps them out
    everyone = ask.choose(ctx, len(texts))
    last = everyone.set_index("text").loc[OUTLIERS]
    assert (last["density"] < everyone["density"].median()).all()
    assert set(everyone["text"].tail(2)) == set(OUTLIERS)
    # a text already asked about is never asked again
    again = ask.choose(ctx, 2, exclude=set(chosen["text"]))
    assert not set(again["text"]) & set(chosen["text"]) and len(again) == 2


def test_a_v10_workspace_migrates(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    for step in MIGRATIONS[:10]:
        con.execute(step)
    con.execute("INSERT INTO meta VALUES ('schema_version', '10')")
    con.close()
    Store._migrated.discard(str(path.resolve()))
    store = Store(path)
    assert store.migrate() == SCHEMA_VERSION == store.schema_version() > 10
    assert store.label_requests().empty and store.human_labels().empty


def _cli(*args):
    return main(["samples", "label", *args])


@pytest.mark.slow
def test_ask_answer_and_train_on_the_answers_next_cycle(weak_baseline_ws, monkeypatch, capsys):
    from bench.banking77 import answer_requests

    ws, store = weak_baseline_ws, weak_baseline_ws.store
    root = str(ws.root)
    auth.add_user(store, APPROVER, "approver", PASSWORD)
    auth.add_user(store, LABELER, "labeler", LABELER_PASSWORD)
    auth.add_user(store, VIEWER, "viewer", VIEWER_PASSWORD)
    config = ws.config()
    config.curate.ask_humans_per_cycle = 3
    config.train.epochs = 1
    ws.save_config(config)
    heldout_before = store.examples("heldout")

    first = cycle.evolve(ws, cycles=1, progress=False)[-1]
    queue = store.label_requests(status="pending")
    assert len(queue) == 3 and set(queue["cycle_id"]) == {first.cycle_id}
    assert queue["score"].is_monotonic_decreasing
    pool = store.unlabeled_pool()
    assert set(queue["text"]) <= set(pool["text"])
    assert queue.set_index("text")["example_id"].to_dict() == pool.set_index("text").loc[queue["text"], "id"].to_dict()
    log = store.audit_entries()
    assert log[log["action"] == "labels_requested"]["subject"].tolist() == [f"cycle:{first.cycle_id}"]

    # the queue, as a person reads it
    assert _cli("--workspace", root) == 0
    out = capsys.readouterr().out
    assert "3 texts wait for a label" in out and all(f"{i:>5}  cycle" in out for i in queue["id"])
    assert _cli("--workspace", root, "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in listed] == queue["id"].tolist() and len(listed[0]["suggestions"]) == 3

    one, two, three = (int(i) for i in queue["id"])
    label = json.loads(queue["suggestions"].iloc[0])[1]["label"]  # the second suggestion: a person may disagree
    monkeypatch.setenv("EVOLAB_PASSWORD", LABELER_PASSWORD)
    refused = [(("--id", str(one), "--label", "no_such_label", "--by", LABELER), "unknown label 'no_such_label'"),
               (("--id", "999", "--label", label, "--by", LABELER), "no label request 999"),
               (("--id", str(one), "--label", label, "--skip", "--by", LABELER), "--label L or --skip"),
               (("--id", str(one), "--label", label), "needs --by NAME")]
    for args, why in refused:
        assert _cli("--workspace", root, *args) == 1
        err = [line for line in capsys.readouterr().err.splitlines() if "EVOLAB_PASSWORD" not in line]
        assert len(err) == 1 and err[0].startswith("error: ") and why in err[0], err
    monkeypatch.setenv("EVOLAB_PASSWORD", VIEWER_PASSWORD)
    assert _cli("--workspace", root, "--id", str(one), "--label", label, "--by", VIEWER) == 1
    assert "'vera' is a viewer, not an approver or a labeler" in capsys.readouterr().err
    assert (store.label_requests()["status"] == "pending").all()  # nothing half-written

    monkeypatch.setenv("EVOLAB_PASSWORD", LABELER_PASSWORD)
    assert _cli("--workspace", root, "--id", str(one), "--label", label, "--by", LABELER) == 0
    assert f"labeled {label} by {LABELER}" in capsys.readouterr().out
    assert _cli("--workspace", root, "--id", str(one), "--label", label, "--by", LABELER) == 1
    assert f"label request {one} was already answered ({label}) by {LABELER}" in capsys.readouterr().err
    monkeypatch.setenv("EVOLAB_PASSWORD", PASSWORD)
    assert _cli("--workspace", root, "--id", str(two), "--skip", "--by", APPROVER) == 0
    capsys.readouterr()

    # the bench's oracle answers what was asked and nothing else, through the same action
    oracle = auth.authenticate(store, APPROVER, PASSWORD, "test")
    text_three = queue.loc[queue["id"] == three, "text"].item()
    unasked = next(t for t in pool["text"] if t not in set(queue["text"]))
    assert answer_requests(ws, oracle, {text_three: "shipping_delay", unasked: "account_access"}) == 1
    assert answer_requests(ws, oracle, {text_three: "shipping_delay"}) == 0  # nothing left to answer
    requests = store.label_requests().set_index("id")
    assert requests.loc[[one, two, three], "status"].tolist() == ["answered", "skipped", "answered"]
    assert unasked not in set(requests["text"])

    log = store.audit_entries()
    answered = log[log["action"].isin(["label_answered", "label_skipped"])]
    assert answered[["actor", "action", "subject"]].values.tolist() == [
        [LABELER, "label_answered", f"label_request:{one}"], [APPROVER, "label_skipped", f"label_request:{two}"],
        [APPROVER, "label_answered", f"label_request:{three}"]]
    assert ((log["actor"] == VIEWER) & (log["action"] == "auth_refused")).any()

    # answered after cycle 2 began: not in its training data; in cycle 3's, as seed, with the person's label
    text_one = queue.loc[queue["id"] == one, "text"].item()
    text_two = queue.loc[queue["id"] == two, "text"].item()
    before = pd.read_parquet(ws.checkpoints / f"cycle_{first.cycle_id}" / "train.parquet")
    assert "human_label" not in set(before["source"])
    second = cycle.evolve(ws, cycles=1, progress=False)[-1]
    train = pd.read_parquet(ws.checkpoints / f"cycle_{second.cycle_id}" / "train.parquet")
    human = train[train["source"] == "human_label"]
    assert sorted(zip(human["text"], human["label"])) == sorted([(text_one, label), (text_three, "shipping_delay")])
    assert text_two not in set(human["text"])
    # the person's label wins over the teacher's: neither answered text is pseudo-labeled again
    samples = store.samples(second.cycle_id)
    assert not set(samples.loc[samples["generator"] == "self_label", "text"]) & {text_one, text_three}
    # and the held-out rows are what they were
    pd.testing.assert_frame_equal(store.examples("heldout"), heldout_before)
    assert not {text_one, text_three} & (set(store.heldout("gate")["text"]) | set(store.heldout("selection")["text"]))
    # the new cycle asks about new texts only
    newer = store.label_requests(cycle_id=second.cycle_id)
    assert len(newer) == 3 and not set(newer["text"]) & set(queue["text"])


@pytest.mark.parametrize("value", [-1, 100_000, 2.5])
def test_the_knob_is_bounded(value):
    from core.config import ConfigError, parse_config

    with pytest.raises(ConfigError):
        parse_config({"curate": {"ask_humans_per_cycle": value}})


def test_the_dashboard_labels_with_one_click_as_the_signed_in_person(monkeypatch, workspace):
    from tests.test_dashboard import buttons, open_page, texts

    store = workspace.store
    auth.add_user(store, LABELER, "labeler", LABELER_PASSWORD)
    auth.add_user(store, APPROVER, "approver", PASSWORD)
    auth.add_user(store, VIEWER, "viewer", VIEWER_PASSWORD)
    cid = store.create_cycle("evolve", "curate", None, "test")
    hints = json.dumps([{"label": "shipping_delay", "p": 0.5}, {"label": "account_access", "p": 0.4}])
    requests = pd.DataFrame({"example_id": [7, 8], "text": AMBIGUOUS[:2], "score": [0.4, 0.3],
                             "uncertainty": [0.8, 0.7], "density": [0.5, 0.43], "suggestions": hints})
    store.save_samples(cid, pd.DataFrame(columns=["generator", "parent_id", "text", "label", "confidence",
                                                  "difficulty", "scores", "status", "reason"]), "data_review",
                       requests)
    first, second = store.label_requests()["id"].tolist()

    at = open_page(monkeypatch, workspace.root, "synthetic_data", user=VIEWER, password=VIEWER_PASSWORD)
    assert "Label queue: 2 texts wait for a person" in texts(at) and buttons(at) == {"Sign out"}
    assert AMBIGUOUS[0] in [t.value for t in at.text]

    at = open_page(monkeypatch, workspace.root, "synthetic_data", user=LABELER, password=LABELER_PASSWORD)
    at.button(key=f"label_{first}_account_access").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert f"request {first} labeled account_access" in at.success[0].value
    assert "Label queue: 1 texts wait for a person" in texts(at)
    at.selectbox(key=f"label_other_{second}").select("billing_question").run()
    at.button(key=f"label_pick_{second}").click().run()
    assert not at.exception and "Label queue" not in texts(at)
    done = store.label_requests().set_index("id")
    assert done.loc[[first, second], ["status", "label", "answered_by"]].values.tolist() == [
        ["answered", "account_access", LABELER], ["answered", "billing_question", LABELER]]
    assert store.audit_entries()["action"].tolist()[-2:] == ["label_answered", "label_answered"]
