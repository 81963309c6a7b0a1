"""Self-diagnosis on data built so the answer is known."""
import json
from pathlib import Path

import pandas as pd
import pytest

from core import cycle, model as M
from core.cli import main
from core.diagnose.attribution import attribute, top_tokens
from core.train import TrainSpec, train
from tests.conftest import built_once, copy_workspace, fast_config, make_workspace


@pytest.fixture(scope="session")
def _planted_template(tmp_path_factory, tiny_csvs):
    """Held-out 'billing_question' rows that are really payment errors: the model must confuse the pair. Built
    once for the run (tests/conftest.py built_once); each test takes a copy."""
    def build(folder):
        held = pd.read_csv(tiny_csvs["heldout"])
        payments = pd.read_csv("data/tickets_unlabeled.csv")["text"]
        payments = payments[payments.str.contains("declined|failed", case=False)].head(4).tolist()
        billing_idx = held.index[held["label"] == "billing_question"][:4]
        held.loc[billing_idx, "text"] = payments[: len(billing_idx)]
        path = folder / "heldout.csv"
        held.to_csv(path, index=False)
        config = fast_config()
        config.diagnose.max_clusters = 2
        config.diagnose.acts = ["asks", "attributions", "clusters", "layers"]  # the activations choose the LoRA layers
        ws = make_workspace(folder / "ws", {**tiny_csvs, "heldout": path}, config)
        assert cycle.run_cycle(ws, cycle.start_cycle(ws), progress=False).status == "done"
        return str(ws.root)
    return Path(built_once(tmp_path_factory, "planted", build))


@pytest.fixture
def planted_confusion(tmp_path, _planted_template):
    return copy_workspace(_planted_template, tmp_path / "ws")


@pytest.mark.slow
def test_planted_confusion_is_the_top_weakness(planted_confusion, capsys):
    ws = planted_confusion
    assert main(["diagnose", "--workspace", str(ws.root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    top = report["findings"][0]
    assert top["kind"] == "confusion_pair"
    assert top["subject"] == "billing_question -> payment_processing_error"
    assert "separating 'billing_question' from 'payment_processing_error'" in top["action"]
    assert top["detail"]["trend"] == "new"
    store = ws.store
    attributions = store.attributions(0)
    wrong = attributions[~attributions["correct"]]
    # every error of the selection part, under the cap; the gate part is never diagnosed
    assert len(wrong) == int((~store.eval_results("v1", "selection")["correct"]).sum())
    assert set(attributions["example_id"]) <= set(store.heldout("selection")["id"])
    assert attributions["baseline"].str.contains("PAD").all() and attributions["delta"].notna().all()
    internals = store.diagnosis_internals(0)
    heads = internals["heads"]
    assert len(heads["importance"]) == 6 and len(heads["importance"][0]) == 12  # MiniLM: 6 layers x 12 heads
    assert heads["lora_layers"] and "layers" in heads["reason"]
    assert len(internals["activations"]) == 6 and internals["activations_summary"].startswith("layer")


@pytest.mark.slow
def test_findings_are_tracked_across_cycles(planted_confusion):
    ws = planted_confusion
    cycle.run_diagnosis(ws, 0, "v1", None)
    outcome = cycle.evolve(ws, cycles=1, progress=False)[-1]
    findings = ws.store.diagnoses(outcome.cycle_id)
    trends = {json.loads(d)["trend"] for d in findings["detail"]}
    assert "persisting" in trends  # the same production model shows the same planted confusion
    lineage = ws.store.version("v2")["lineage"]
    assert lineage["lora_reason"].startswith("layers") and isinstance(lineage["lora_layers"], list)
    # the layers are the activation analysis' choice, and the lineage says which and why
    choice = ws.store.diagnosis_internals(outcome.cycle_id)["lora_choice"]
    assert choice["source"] == "activations" and choice["lora_layers"]
    assert "units separating failures from successes (AUC" in choice["reason"]
    assert set(choice["units"]) == {str(layer) for layer in choice["lora_layers"]}
    assert lineage["lora_layers"] == choice["lora_layers"] and lineage["lora_reason"] == choice["reason"]
    assert "early_stop" in lineage


def test_attribution_ranks_a_planted_trigger_word_first(tmp_path):
    """Class 'alert' differs from 'calm' only by the word 'zebra': attributions must point at it."""
    calm = [f"the weekly report number {i} is ready for review" for i in range(30)]
    alert = [f"the weekly report number {i} is ready for review zebra" for i in range(30)]
    frame = pd.DataFrame({"text": calm + alert, "label": ["calm"] * 30 + ["alert"] * 30})
    frame.to_parquet(tmp_path / "train.parquet")
    frame.iloc[::5].to_parquet(tmp_path / "eval.parquet")
    config = fast_config()
    spec = TrainSpec(run_id="trigger", labels=["alert", "calm"], model=config.model.model_dump(),
                     train={**config.train.model_dump(), "max_steps": 30, "lr": 2e-3, "head_lr": 5e-3},
                     train_file=str(tmp_path / "train.parquet"), eval_file=str(tmp_path / "eval.parquet"),
                     checkpoint_dir=str(tmp_path / "ckpt"), output_dir=str(tmp_path / "out"))
    result = train(spec, progress=False)
    loaded = M.load_version(tmp_path / "out", result["files"], "trigger")
    texts = ["the monthly summary 7 is ready zebra", "please review report 12 zebra today"]
    probs = M.predict_proba(loaded, texts)
    assert (probs.argmax(1) == 0).all(), "precondition: the trigger routes to 'alert'"
    for record in attribute(loaded, texts, [0, 0]):
        assert top_tokens(record["tokens"], record["scores"], k=1) == ["zebra"]
        assert abs(record["delta"]) < 1.0


@pytest.mark.slow
def test_a_diagnosis_that_may_not_act_is_shown_and_steers_nothing(planted_confusion):
    """diagnose.acts = []: the ablation's "diagnosis off" (bench/README): findings are stored as ever, and the
    cycle's curation asks nothing of the generators for them, nor do they choose the LoRA layers."""
    from tests.conftest import curate_only

    ws = planted_confusion
    config = ws.config()
    config.diagnose.acts = []
    ws.save_config(config)
    cid = curate_only(ws)
    findings = ws.store.diagnoses(cid)
    assert "billing_question -> payment_processing_error" in set(findings["subject"])
    report = json.loads(ws.store.stage_runs(cid).set_index("stage").loc["curate", "detail"])
    assert report["asks"] == {} and report["asked"] == 0
    assert report["per_generator"]["counterfactual"]["note"] == "no confused pairs diagnosed"
    assert ws.store.diagnosis_internals(cid)["lora_choice"]["lora_layers"]  # it chose, and is not followed
    assert cycle._model_config_for(ws, ws.store.cycle(cid)) == (config.model.model_dump(), "configured")
    config.diagnose.acts = ["layers"]
    ws.save_config(config)
    chosen, reason = cycle._model_config_for(ws, ws.store.cycle(cid))
    assert chosen["lora_layer_ids"] == ws.store.diagnosis_internals(cid)["lora_choice"]["lora_layers"]
    assert reason.startswith("layers")
