"""Curation with known answers: each bad sample is dropped for the right reason; people win."""
import json
import threading
from http.server import HTTPServer

import pandas as pd

import pytest

from core import auth, curate as C, cycle, registry
from core.cli import main
from core.curate.registry import Context, candidates, register
from tests.conftest import ChatHandler

GOOD = "my parcel still has not arrived after two weeks, where is my package"


def _context(ws, **cfg_overrides):
    cfg = ws.config().curate.model_copy(update=cfg_overrides)
    store = ws.store
    return Context(loaded=registry.load_alias(ws), seed=store.examples("seed"), pool=store.examples("unlabeled"),
                   pairs=[], favoured=set(), cfg=cfg, root=ws.root)


def test_planted_bad_samples_are_dropped_with_the_right_reason(baseline_ws):
    store = baseline_ws.store
    seed_text = store.examples("seed").query("label == 'shipping_delay'")["text"].iloc[0]
    held_text = store.examples("heldout").query("label == 'account_access'")["text"].iloc[0]
    near = seed_text[:-3] + seed_text[-2] + seed_text[-3] + seed_text[-1]  # one swapped letter pair
    planted = [
        {"parent_id": None, "text": seed_text.upper(), "label": "shipping_delay"},  # duplicate of the seed
        {"parent_id": None, "text": near, "label": "shipping_delay"},  # near-duplicate of the seed
        {"parent_id": None, "text": held_text.replace(" ", "  ", 1) + " thanks", "label": "account_access"},
        {"parent_id": None, "text": GOOD, "label": "billing_question"},  # mislabeled
        {"parent_id": None, "text": GOOD, "label": "shipping_delay"},  # a later exact duplicate
    ]
    register("planted")(lambda ctx: candidates("planted", planted))
    ctx = _context(baseline_ws, generators=["planted"], min_confidence=0.3, min_knn_agreement=0.3,
                   min_consistency=0.5)
    samples, report = C.curate(ctx, store.examples("heldout"), pd.DataFrame())
    reasons = samples["reason"].tolist()
    assert reasons[0] == "exact duplicate of a labeled example"
    assert reasons[1].startswith("near-duplicate")
    assert reasons[2].startswith("contamination")
    assert reasons[3].startswith("verifiers disagree") and "predicts shipping_delay" in reasons[3]
    assert reasons[4].startswith("exact duplicate of sample #3")
    assert (samples["status"] == "dropped").all()
    assert report["summary"] == "generated 5, kept 0"
    scored = json.loads(samples["scores"].iloc[3])
    assert set(scored) == {"model", "knn", "knn_top", "consistency", "margin"}


def test_a_good_sample_is_kept_with_difficulty_and_scores(baseline_ws):
    register("good")(lambda ctx: candidates("good", [{"parent_id": None, "text": GOOD, "label": "shipping_delay"}]))
    ctx = _context(baseline_ws, generators=["good"], min_confidence=0.3, min_knn_agreement=0.3,
                   min_consistency=0.5)
    samples, report = C.curate(ctx, baseline_ws.store.examples("heldout"), pd.DataFrame())
    assert samples["status"].tolist() == ["kept"] and report["per_generator"]["good"] == {"generated": 1, "kept": 1}
    assert samples["difficulty"].iloc[0] in (0, 1, 2, 3)


def test_a_generated_traffic_probe_text_is_dropped_as_contamination(baseline_ws):
    """The probe's texts carry the gate's accuracy over to traffic: a generator that writes one, word for word
    or nearly, would train the candidate on what estimates it. The curate stage drops both like a held-out copy."""
    ws, store = baseline_ws, baseline_ws.store
    probe = store.traffic_probe()["text"]
    assert len(probe) and set(probe).isdisjoint(store.unlabeled_pool()["text"]), "precondition: a probe is set aside"
    longest = probe[probe.str.len().sort_values(ascending=False).index].tolist()
    exact, near = longest[0], longest[1] + " thanks"
    (ws.root / "templates.json").write_text(json.dumps({"templates": {"billing_question": [exact, near]},
                                                        "slots": {}}))
    config = ws.config()
    config.curate.generators = ["templates"]
    ws.save_config(config)
    cycle_id = store.create_cycle("evolve", "curate", "v1", "test")
    cycle.stage_curate(ws, store.cycle(cycle_id), {"progress": False}, cycle.FLOWS["evolve"]["curate"])
    samples = store.samples(cycle_id)
    assert set(samples["text"]) == {exact, near} and (samples["status"] == "dropped").all()
    for text, copied in ((exact, exact), (near, longest[1])):
        reason = samples[samples["text"] == text]["reason"].iloc[0]  # later copies are duplicates of this one
        assert reason.startswith("contamination: ") and reason.endswith(f"similar to traffic probe text "
                                                                        f"{copied[:60]!r}"), reason


class _ChatServer(ChatHandler):
    requests: list = []

    def reply(self, body: dict) -> str:
        label = body["messages"][-1]["content"].split("'")[1]
        return "\n".join(f"{i + 1}. {label.replace('_', ' ')} problem number {i} with my order #{100 + i}"
                         for i in range(3))


def test_llm_generator_speaks_openai_chat_completions(baseline_ws, monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), _ChatServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("TEST_LLM_KEY", "sk-test")
        cfg = baseline_ws.config().curate
        llm_cfg = cfg.llm.model_copy(update={"enabled": True, "base_url": f"http://127.0.0.1:{server.server_port}/v1",
                                             "model": "tiny-chat", "api_key_env": "TEST_LLM_KEY", "max_requests": 2})
        ctx = _context(baseline_ws, generators=["llm"], llm=llm_cfg)
        ctx.favoured = {"shipping_delay", "account_access"}
        rows = C.GENERATORS["llm"](ctx)
    finally:
        server.shutdown()
    path, auth_header, body = _ChatServer.requests[0]
    assert path == "/v1/chat/completions" and auth_header == "Bearer sk-test"
    assert body["model"] == "tiny-chat" and body["messages"][-1]["role"] == "user"
    assert len(rows) == 6 and set(rows["label"]) == {"shipping_delay", "account_access"}
    assert not rows["text"].str.match(r"^\d").any()  # list numbering stripped


def test_llm_generator_is_off_by_default(baseline_ws):
    ctx = _context(baseline_ws)
    assert C.GENERATORS["llm"](ctx).empty and "disabled" in ctx.notes["llm"]


@pytest.mark.slow
def test_human_review_wins_and_rejections_are_never_trained_on(baseline_ws, monkeypatch, tmp_path):
    ws = baseline_ws
    config = ws.config()
    config.gates.data_review.policy = "human"
    ws.save_config(config)
    monkeypatch.setenv("EVOLAB_PASSWORD", "approver-pw")
    auth.add_user(ws.store, "alice", "approver", "approver-pw")
    outcome = cycle.evolve(ws, cycles=1, progress=False)[-1]
    assert outcome.status == "waiting" and "data_review gate" in outcome.message
    store = ws.store
    kept = store.samples(outcome.cycle_id, status="kept")
    assert len(kept) >= 3
    reject_ids = kept["id"].head(2).astype(int).tolist()
    relabel_id = int(kept["id"].iloc[2])
    root = str(ws.root)
    assert main(["samples", "reject", "--workspace", root, "--ids", ",".join(map(str, reject_ids)),
                 "--by", "alice"]) == 0
    assert main(["samples", "relabel", "--workspace", root, "--ids", str(relabel_id), "--to-label",
                 "account_access", "--by", "alice"]) == 0
    assert main(["samples", "relabel", "--workspace", root, "--ids", str(relabel_id), "--to-label", "nope",
                 "--by", "alice"]) == 1
    assert main(["approve", "--workspace", root, str(outcome.gate_id), "--by", "alice"]) == 0
    cycle.resume(ws, progress=False)
    trained = pd.read_parquet(ws.checkpoints / f"cycle_{outcome.cycle_id}" / "train.parquet")
    rejected_texts = set(store.samples(outcome.cycle_id).query("status == 'rejected'")["text"])
    assert rejected_texts and not rejected_texts & set(trained["text"])
    relabelled = store.samples(outcome.cycle_id).set_index("id").loc[relabel_id]
    assert relabelled["label"] == "account_access" and relabelled["status"] == "approved"
    assert ((trained["text"] == relabelled["text"]) & (trained["label"] == "account_access")).any()
    # the next cycle carries the people's decisions over, whatever its verifiers think
    config.gates.data_review.policy = "auto"
    ws.save_config(config)
    nxt = cycle.evolve(ws, cycles=1, progress=False)[-1]
    later = store.samples(nxt.cycle_id)
    dropped = later[later["text"].isin(rejected_texts)]
    assert (dropped["status"] == "dropped").all() and dropped["reason"].str.contains("rejected by alice").all()
    carried = later[later["generator"] == "human_review"]
    assert relabelled["text"] in set(carried["text"]) and (carried["status"] == "approved").all()
    actions = store.audit_entries()["action"].tolist()
    assert "samples_reject" in actions and "samples_relabel" in actions
    # export
    for suffix in ("parquet", "jsonl"):
        out = tmp_path / f"kept.{suffix}"
        assert main(["samples", "export", "--workspace", root, "--cycle", str(outcome.cycle_id),
                     "--out", str(out), "--by", "alice"]) == 0
        frame = pd.read_parquet(out) if suffix == "parquet" else pd.read_json(out, lines=True)
        assert set(frame["status"]) <= {"kept", "approved"} and len(frame) > 0
