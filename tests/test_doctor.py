"""The training doctor: sick loss curves are detected, recorded with their step, and recovered from."""
import json
import math

import pytest

from core import model as M
from core.config import DoctorConfig
from core.doctor import Doctor
from core.store import Store
from core.train import TrainSpec, train
from tests.conftest import fast_config


def test_doctor_rules():
    doc = Doctor(DoctorConfig(spike_factor=3.0, plateau_patience=2, gap_patience=2, gap_max=0.5))
    for loss in (2.0, 1.8, 1.7):
        assert doc.check_step(loss) is None
    assert doc.check_step(math.nan).kind == "nan_loss"
    spike = doc.check_step(50.0)
    assert spike.kind == "divergence" and spike.action == "rollback"
    assert doc.lr_scale == pytest.approx(0.3 ** 2) and doc.rollbacks == 2
    assert doc.check_eval(1.0, 0.9) is None
    assert doc.check_eval(1.2, 0.6) is None  # no gain once
    plateau_or_gap = doc.check_eval(1.5, 0.4)
    assert plateau_or_gap.kind in ("overfitting", "plateau") and plateau_or_gap.action == "stop"
    assert Doctor(DoctorConfig(max_rollbacks=0)).check_step(math.inf).action == "stop"


def _spec(ws, tmp_path, run_id, **train_overrides):
    config = fast_config()
    store = ws.store
    store.examples("seed")[["text", "label"]].to_parquet(tmp_path / "train.parquet")
    store.examples("heldout")[["text", "label"]].to_parquet(tmp_path / "eval.parquet")
    doctor = train_overrides.pop("doctor", {})
    inject = train_overrides.pop("inject_nan_steps", [])
    return TrainSpec(run_id=run_id, labels=store.labels(), model=config.model.model_dump(),
                     train={**config.train.model_dump(), **train_overrides},
                     train_file=str(tmp_path / "train.parquet"), eval_file=str(tmp_path / "eval.parquet"),
                     checkpoint_dir=str(tmp_path / run_id / "ckpt"), output_dir=str(tmp_path / run_id / "out"),
                     db=str(ws.db), extra={"doctor": {**DoctorConfig().model_dump(), **doctor},
                                           "inject_nan_steps": inject})


def _events(ws, run_id):
    return Store(ws.db).train_events(run_id)


def test_injected_nan_losses_are_rolled_back(workspace, tmp_path):
    result = train(_spec(workspace, tmp_path, "nan", max_steps=12, inject_nan_steps=[4, 5]), progress=False)
    assert result["rollbacks"] == 2 and result["steps"] == 12 and not result["stopped_early"]
    events = _events(workspace, "nan")
    assert list(events[events.kind == "nan_loss"]["step"]) == [4, 5]
    assert (events.kind == "rollback").sum() == 2
    loaded = M.load_version(tmp_path / "nan" / "out", result["files"], "nan")
    assert all(math.isfinite(v) for v in M.predict_proba(loaded, ["where is my parcel"]).ravel())


def test_absurd_learning_rate_is_detected_and_recovered(workspace, tmp_path):
    spec = _spec(workspace, tmp_path, "lr", max_steps=24, lr=50.0, head_lr=50.0, eval_every=8)
    result = train(spec, progress=False)
    events = _events(workspace, "lr")
    assert result["rollbacks"] >= 1 and (events.kind == "divergence").any()
    assert result["steps"] == 24  # the run was not lost
    assert result["best_val_acc"] > 0.5  # 4 classes: far above chance after recovery
    lr_rows = Store(workspace.db).metrics("lr").query("name == 'lr'")
    assert lr_rows["value"].max() < 50.0  # the doctor lowered the learning rate


def test_plateau_stops_training_early(workspace, tmp_path):
    spec = _spec(workspace, tmp_path, "flat", max_steps=40, lr=1e-12, head_lr=1e-12, eval_every=1,
                 doctor={"plateau_patience": 3})
    result = train(spec, progress=False)
    assert result["stopped_early"] and result["steps"] < 10
    events = _events(workspace, "flat")
    assert {"plateau", "early_stop"} <= set(events.kind)
    assert json.loads((tmp_path / "flat" / "ckpt" / "result.json").read_text())["stopped_early"]
