"""bench/teacher_ceiling.py on the demo tickets: the ceiling curve is computed, not printed from a table."""
import pytest
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def _bench(*args):
    return subprocess.run([sys.executable, str(REPO / "bench" / "teacher_ceiling.py"), *args],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_ceiling_curve_rises_to_full_accuracy_labels(tmp_path):
    frame = pd.concat([pd.read_csv(REPO / "data" / name) for name in ("tickets_labeled.csv", "tickets_heldout.csv")])
    frame.rename(columns={"label": "category"}).to_csv(tmp_path / "train.csv", index=False)
    result = _bench("--data", str(tmp_path), "--dev-size", "30", "--k", "5")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "10 labels; seed 100, pool 40, dev test 30" in result.stdout
    rows = re.findall(r"^\s+(\d+)%\s+([\d.]+)%\s+([\d.]+)%$", result.stdout, re.M)
    assert [int(fixed) for fixed, _, _ in rows] == [0, 25, 50, 75, 100]
    label_acc = [float(acc) for _, acc, _ in rows]
    assert label_acc == sorted(label_acc) and label_acc[-1] == 100.0  # fixing teacher errors only raises it
    assert all(0 <= float(dev) <= 100 for _, _, dev in rows)
    teachers = re.findall(r"^\s+([\d.]+)%\s+(model alone|propagation alone|propagation seeded)", result.stdout, re.M)
    assert len(teachers) == 3


@pytest.mark.slow
def test_missing_column_is_one_line_and_exit_2(tmp_path):
    pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]}).to_csv(tmp_path / "train.csv", index=False)
    result = _bench("--data", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "missing column(s) category" in result.stderr
