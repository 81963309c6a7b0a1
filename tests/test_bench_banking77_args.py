"""bench/banking77.py refuses a bad count in one line and exit 2, before it builds anything."""
from __future__ import annotations

import pytest

from bench.banking77 import main


@pytest.mark.parametrize("flag", ["--scaffold-searches", "--oracle-budget", "--oracle-eval-budget"])
def test_a_negative_count_is_one_line_and_exit_2(tmp_path, capsys, flag):
    (tmp_path / "train.csv").write_text("text,category\nhello,greeting\n", encoding="utf-8")
    work = tmp_path / "work"
    assert main(["--data", str(tmp_path), "--work", str(work), flag, "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {flag} must be 0 or more"]
    assert not work.exists()  # nothing half-made
