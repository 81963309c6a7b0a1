"""Curation that is steered, not only measured: the diagnosis' counts reach the generators, the requested
difficulty mix decides what is kept, and pseudo-labels count in training as much as their teacher is sure."""
import json
import math
import re
import threading
from http.server import HTTPServer

import numpy as np
import pandas as pd

from core import curate as C, cycle, diagnose, model as M, registry
from core.curate.registry import Context, candidates, register, split_counts
from core.diagnose.errors import class_findings, pair_findings
from core.train import TrainSpec, train
from tests.conftest import ChatHandler, fast_config


def _context(ws, **cfg_overrides):
    cfg = ws.config().curate.model_copy(update=cfg_overrides)
    store = ws.store
    return Context(loaded=registry.load_alias(ws), seed=store.examples("seed"), pool=store.examples("unlabeled"),
                   pairs=[], favoured=set(), cfg=cfg, root=ws.root)


def test_findings_carry_the_counts_their_actions_ask_for():
    results = pd.DataFrame({"example_id": range(8), "text": [f"t{i}" for i in range(8)],
                            "label": ["a", "a", "a", "b", "b", "c", "c", "c"],
                            "predicted": ["b", "b", "a", "b", "b", "c", "a", "c"]})
    results["correct"] = results["label"] == results["predicted"]
    pairs = pair_findings(results, samples_per_error=7)
    findings = pairs + class_findings(results, pairs=pairs, samples_per_error=7)
    frame = pd.DataFrame([{**f, "detail": json.dumps(f["detail"])} for f in findings])
    asked = diagnose.asks(frame, samples_per_error=7)
    # a -> b: 2 errors x 7; c -> a: 1 error x 7, and c is weak too (a single confusion explains nothing)
    assert asked == {"pair:a->b": 14, "pair:c->a": 7, "class:c": 7}
    for f in findings:
        assert f"generate {f['detail']['asked']} samples" in f["action"]


class _CountingChat(ChatHandler):
    """Answers each prompt with exactly the number of messages it asks for, and remembers the prompts."""
    prompts: list = []

    def reply(self, body: dict) -> str:
        prompt = body["messages"][-1]["content"]
        type(self).prompts.append(prompt)
        n = int(re.match(r"Write (\d+) ", prompt).group(1))
        label = prompt.split("'")[1]
        return "\n".join(f"- {label.replace('_', ' ')} message {len(type(self).prompts)}-{i}" for i in range(n))


def test_generators_are_asked_for_the_diagnosed_counts_and_the_report_shows_asked_vs_produced(baseline_ws,
                                                                                               monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), _CountingChat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = baseline_ws.config().curate
        llm_cfg = cfg.llm.model_copy(update={"enabled": True, "base_url": f"http://127.0.0.1:{server.server_port}/v1",
                                             "model": "tiny-chat", "per_request": 10, "max_requests": 10})
        ctx = _context(baseline_ws, generators=["llm"], llm=llm_cfg, min_confidence=0.0, min_knn_agreement=0.0,
                       min_consistency=0.0)
        ctx.pairs = [("shipping_delay", "account_access", 2)]
        ctx.favoured = {"shipping_delay", "account_access"}
        ctx.asks = {"pair:shipping_delay->account_access": 23}
        samples, report = C.curate(ctx, baseline_ws.store.examples("heldout"), pd.DataFrame())
    finally:
        server.shutdown()
    # 23 asked, 10 a request: three requests of 10, 10 and 3 messages, each with its requested levels
    assert [int(re.match(r"Write (\d+) ", p).group(1)) for p in _CountingChat.prompts] == [10, 10, 3]
    levels = split_counts(3, ctx.requested_mix("shipping_delay"))
    assert ctx.requested_mix("shipping_delay") == [0.0, 0.2, 0.4, 0.4]  # a diagnosed class is asked for harder
    assert f"{levels[3]} hard: nearly indistinguishable from 'account_access'" in _CountingChat.prompts[-1]
    ask = report["asks"]["pair:shipping_delay->account_access"]
    assert ask["asked"] == 23 and ask["produced"] == 23 and ask["by_generator"] == {"llm": 23}
    assert ask["kept"] == int(samples["status"].eq("kept").sum()) > 0
    assert report["asked"] == 23 and report["produced_for_asks"] == 23
    assert all(json.loads(s).get("target") == "pair:shipping_delay->account_access" for s in samples["scores"])


def test_the_requested_mix_decides_which_written_samples_are_kept(baseline_ws):
    """Every class's written samples follow its requested mix level by level, also below the class cap."""
    loaded = registry.load_alias(baseline_ws)
    pool = baseline_ws.store.examples("unlabeled")["text"].head(40).tolist()
    predicted = np.asarray(loaded.labels, dtype=object)[M.predict_proba(loaded, pool).argmax(1)]
    register("written")(lambda ctx: candidates("written", [{"parent_id": None, "text": t, "label": p}
                                                         for t, p in zip(pool, predicted)]))
    ctx = _context(baseline_ws, generators=["written"], min_confidence=0.0, min_knn_agreement=0.0,
                   min_consistency=0.0, max_per_class=1000, difficulty_mix=[0.25, 0.25, 0.25, 0.25])
    samples, report = C.curate(ctx, baseline_ws.store.examples("heldout"), pd.DataFrame())
    scored = samples[samples["difficulty"] >= 0]
    dropped_for_mix = 0
    for label, group in scored.groupby("label"):
        available = np.bincount(group["difficulty"], minlength=4)
        quotas = [math.ceil(len(group) * 0.25)] * 4
        kept = np.bincount(group.loc[group["status"] == "kept", "difficulty"], minlength=4)
        assert kept.tolist() == np.minimum(available, quotas).tolist(), label
        dropped_for_mix += int((available - kept).sum())
    assert dropped_for_mix > 0  # the pool's texts are mostly easy for the model: the mix had to bite
    assert samples["reason"].str.startswith("difficulty mix").sum() == dropped_for_mix
    kept_levels = np.bincount(samples.loc[samples["status"] == "kept", "difficulty"], minlength=4)
    assert report["difficulty"]["achieved_written"] == [round(c / kept_levels.sum(), 4) for c in kept_levels]
    assert report["difficulty"]["requested"] == [0.25] * 4


def test_pseudo_labels_carry_their_teachers_confidence_into_the_training_data(weak_baseline_ws):
    ws = weak_baseline_ws
    cid = cycle.start_cycle(ws)
    ctx = _context(ws, generators=["self_label"], min_confidence=0.0, min_knn_agreement=0.0, min_consistency=0.0)
    samples, _ = C.curate(ctx, ws.store.examples("heldout"), pd.DataFrame())
    scored = samples[samples["difficulty"] >= 0]  # the rest was filtered before any verifier (duplicates)
    teacher = scored["scores"].map(lambda s: json.loads(s).get("teacher"))
    assert len(scored) > 20 and teacher.notna().all() and (teacher > 0).all() and (teacher <= 1).all() and teacher.nunique() > 1
    ws.store.save_samples(cid, samples, "data_review")
    data = cycle._training_data(ws, ws.store.cycle(cid))
    synthetic = data[data["source"] == "synthetic"]
    kept = samples[samples["status"] == "kept"]
    assert len(synthetic) == len(kept) > 0
    assert np.allclose(np.sort(synthetic["weight"]), np.sort(teacher[kept.index].astype(float)))
    assert (data.loc[data["source"] == "seed", "weight"] == 1.0).all()


def test_a_zero_weight_row_teaches_nothing(workspace, tmp_path):
    """Planted wrong labels at weight 0 outnumber a class's true examples and still do not move the model."""
    ws = workspace
    config = fast_config()
    config.train.epochs = 3
    seed = ws.store.examples("seed")[["text", "label"]]
    victim, thief = "shipping_delay", "billing_question"
    planted = ws.store.examples("heldout").query("label == @victim")[["text"]].assign(label=thief)
    pool = ws.store.examples("unlabeled")["text"].head(60)
    extra = pd.DataFrame({"text": pool, "label": thief})  # a flood of wrong labels, all weightless
    data = pd.concat([seed.assign(weight=1.0), planted.assign(weight=0.0), extra.assign(weight=0.0)],
                     ignore_index=True)
    data.to_parquet(tmp_path / "train.parquet")
    ws.store.examples("heldout")[["text", "label"]].to_parquet(tmp_path / "eval.parquet")
    spec = TrainSpec(run_id="weights", labels=ws.store.labels(), model=config.model.model_dump(),
                     train=config.train.model_dump(), train_file=str(tmp_path / "train.parquet"),
                     eval_file=str(tmp_path / "eval.parquet"), checkpoint_dir=str(tmp_path / "ckpt"),
                     output_dir=str(tmp_path / "out"), db=str(ws.db), extra={})
    result = train(spec, progress=False)
    loaded = M.load_version(tmp_path / "out", result["files"], "weights")
    probe = planted["text"].tolist()  # texts it was told, at weight 0, belong to the other class
    predicted = np.asarray(loaded.labels, dtype=object)[M.predict_proba(loaded, probe).argmax(1)]
    assert (predicted == victim).sum() >= len(probe) - 1, predicted


def test_weighed_pseudo_labels_keep_what_the_verifiers_doubt_except_held_back_classes(weak_baseline_ws):
    from core.lessons import Remedy

    ws = weak_baseline_ws
    strict = dict(generators=["self_label"], min_confidence=0.9, min_knn_agreement=0.6, max_per_class=1000)
    verified, _ = C.curate(_context(ws, pseudo_labels="verify", **strict), ws.store.examples("heldout"),
                           pd.DataFrame())
    doubted = verified["reason"].str.startswith("verifiers disagree")
    assert doubted.sum() >= 5  # bars this high drop a good part of the traffic
    ctx = _context(ws, pseudo_labels="weigh", **strict)
    held = verified.loc[doubted, "label"].value_counts().index[0]
    ctx.remedy = Remedy(hold_back={held})
    weighed, report = C.curate(ctx, ws.store.examples("heldout"), pd.DataFrame())
    scored = weighed["difficulty"] >= 0
    mine = weighed["label"] == held
    # every scored pseudo-label of the other classes is kept, with the reason saying it is weighed
    assert (weighed.loc[scored & ~mine, "status"] == "kept").all()
    assert (weighed.loc[scored & ~mine, "reason"] == C.WEIGHED).all()
    # no verdict reads their consistency, so no perturbed view of them was run
    assert not weighed.loc[scored & ~mine, "scores"].str.contains("consistency").any()
    assert weighed.loc[scored & mine, "scores"].str.contains("consistency").all()
    # the class a rejection held back is still verified, with the strict bars
    assert weighed.loc[scored & mine, "reason"].str.startswith("held back after a rejection").any()
    assert report["kept"] > int((verified["status"] == "kept").sum())
