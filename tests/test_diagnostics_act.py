"""Diagnostics that act: the doctor's stops fire with the default settings, and the activation analysis
chooses the layers the next training adapts where `diagnose.acts` asks it to (the lineage saying which and why:
tests/test_diagnose.py)."""
import numpy as np
import pandas as pd

import pytest

from core.config import DoctorConfig, TrainConfig
from core.diagnose.internals import choose_lora_layers, layer_separation
from core.doctor import MIN_EVAL_GAP, eval_interval
from core.store import Store
from core.train import TrainSpec, train
from tests.conftest import fast_config


def test_evaluation_cadence_is_sized_to_the_run():
    cfg = DoctorConfig()
    assert TrainConfig().eval_every == 0  # the default is the sized cadence
    needed = 3 * max(cfg.plateau_patience, cfg.gap_patience) + 1
    for total in (75, 190, 1000, 10_000):  # Banking77's baseline and first cycle, and larger runs
        every = eval_interval(total, cfg)
        assert total // every >= needed - 1 and every >= MIN_EVAL_GAP
        # patience runs out with most of the run still ahead
        assert every * (cfg.gap_patience + 1) <= total / 2 and every * cfg.plateau_patience <= total / 3 + every
    assert eval_interval(9, cfg) == MIN_EVAL_GAP  # a tiny run is not evaluated every step
    assert eval_interval(1000, cfg, eval_every=7) == 7  # an explicit cadence wins
    assert eval_interval(1000, DoctorConfig(plateau_patience=10)) < eval_interval(1000, cfg)


def _run(ws, tmp_path, run_id, train_rows: pd.DataFrame, eval_rows: pd.DataFrame, **train_overrides):
    """A real training run with the default TrainConfig cadence and the default DoctorConfig."""
    config = fast_config()
    train_rows.to_parquet(tmp_path / f"{run_id}_train.parquet")
    eval_rows.to_parquet(tmp_path / f"{run_id}_eval.parquet")
    settings = {**config.train.model_dump(), **train_overrides}
    assert settings["eval_every"] == 0
    spec = TrainSpec(run_id=run_id, labels=ws.store.labels(), model=config.model.model_dump(), train=settings,
                     train_file=str(tmp_path / f"{run_id}_train.parquet"),
                     eval_file=str(tmp_path / f"{run_id}_eval.parquet"),
                     checkpoint_dir=str(tmp_path / run_id / "ckpt"), output_dir=str(tmp_path / run_id / "out"),
                     db=str(ws.db), extra={"doctor": DoctorConfig().model_dump()})
    return train(spec, progress=False), Store(ws.db).train_events(run_id)


def test_plateau_stop_fires_with_the_defaults(workspace, tmp_path):
    """A small seed repeated ten times, three epochs: learned in the first epoch, then nothing to gain. Once an
    epoch this run had 3 evaluations and a patience of 3 could never run out."""
    seed = workspace.store.examples("seed")[["text", "label"]]
    held = workspace.store.examples("heldout")[["text", "label"]]
    result, events = _run(workspace, tmp_path, "flat", pd.concat([seed] * 10, ignore_index=True), held,
                          epochs=3)
    assert result["stopped_early"] and result["stop_reason"] == "plateau"
    assert result["steps"] < result["total_steps"]
    stop = events[events.kind == "early_stop"]
    assert (events.kind == "plateau").any() and len(stop) == 1
    assert stop["detail"].iloc[0].startswith("plateau: stopped at step") and "best state" in stop["detail"].iloc[0]
    assert result["best_step"] <= result["steps"] and result["best_val_acc"] > 0.5  # the best state is kept


@pytest.mark.slow
def test_overfitting_stop_fires_with_the_defaults(workspace, tmp_path):
    """Validation rows are the training texts under another class each: the better the training fit, the worse
    validation gets, so the train-validation gap widens at every evaluation."""
    seed = workspace.store.examples("seed")[["text", "label"]]
    labels = workspace.store.labels()
    shifted = seed.assign(label=seed["label"].map({a: labels[(i + 1) % len(labels)] for i, a in enumerate(labels)}))
    result, events = _run(workspace, tmp_path, "gap", pd.concat([seed] * 10, ignore_index=True), shifted,
                          epochs=3)
    assert result["stopped_early"] and result["stop_reason"] == "overfitting"
    assert (events.kind == "overfitting").any()
    assert events[events.kind == "early_stop"]["detail"].iloc[0].startswith("overfitting:")


def test_activation_separation_picks_the_layer_with_a_planted_signal():
    rng = np.random.default_rng(0)
    failed = np.zeros(80, dtype=bool)
    failed[:12] = True
    per_layer = [rng.normal(size=(80, 48)).astype(np.float32) for _ in range(6)]
    per_layer[4][failed, 5:15] += 2.5  # ten units of layer 4 fire higher on the failures
    per_layer[1][failed, :20] += 3.0  # a lower layer separates better, but the lowest third never competes
    separation = layer_separation(per_layer, failed)
    assert [r["layer"] for r in separation] == list(range(6))
    assert {u["unit"] for u in separation[4]["units"]} == set(range(5, 15))
    assert all(u["higher_on"] == "failed" for u in separation[4]["units"])
    scores = np.array([r["auc"] for r in separation])
    layers, reason = choose_lora_layers(scores, 1, "units separating failures from successes", "AUC", "{:.2f}")
    assert layers == [4]
    assert reason == f"layers 4: units separating failures from successes (AUC {scores[4]:.2f})"
    assert choose_lora_layers(np.array([]), 2, "head importance") == ([], "no head importance available")

