"""Training through `accelerate launch` with two CPU processes (gloo) gives a loadable adapter."""
import json
import subprocess
import sys

import pytest

from core import model as M
from core.store import Store
from core.train import TrainSpec
from tests.conftest import ROOT, fast_config


@pytest.mark.slow
def test_two_process_gloo_training(workspace, tmp_path):
    store = workspace.store
    config = fast_config()
    store.examples("seed")[["text", "label"]].to_parquet(tmp_path / "train.parquet")
    store.examples("heldout")[["text", "label"]].to_parquet(tmp_path / "eval.parquet")
    spec = TrainSpec(run_id="ddp", labels=store.labels(), model=config.model.model_dump(),
                     train={**config.train.model_dump(), "max_steps": 4}, train_file=str(tmp_path / "train.parquet"),
                     eval_file=str(tmp_path / "eval.parquet"), checkpoint_dir=str(tmp_path / "ckpt"),
                     output_dir=str(tmp_path / "out"), db=str(workspace.db))
    spec.save(tmp_path / "spec.json")
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
                           "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "-m", "core.train", str(tmp_path / "spec.json")], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "ckpt" / "result.json").read_text())
    assert result["processes"] == 2 and result["steps"] == 4
    loaded = M.load_version(tmp_path / "out", result["files"], "ddp")
    probs = M.predict_proba(loaded, ["my card payment failed"])
    assert probs.shape == (1, len(store.labels()))
    assert not Store(workspace.db).metrics("ddp").empty  # only the main process wrote, and it did
