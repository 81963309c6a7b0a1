"""The off-peak daemon as a real process: it sleeps outside its window, waits at gates, resumes after a
decision, and stops cleanly on SIGTERM."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import datetime

import pytest

from conftest import ROOT, approve_as
from core import cycle
from core.config import ConfigError, parse_config
from core.daemon import night_of


def _daemon(ws, *args):
    return subprocess.Popen([sys.executable, "-m", "core", "daemon", "--workspace", str(ws.root), "--poll", "0.2",
                             "--window", "01:00-05:00", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _until(proc, lines: list[str], text: str, timeout: float = 180) -> None:
    """Read the daemon's stdout until a line contains text."""
    deadline = time.monotonic() + timeout
    while not any(text in line for line in lines):
        assert proc.poll() is None, f"daemon exited {proc.returncode}: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"never logged {text!r}: {lines}"
        lines.append(proc.stdout.readline())


def _terminate(proc, lines: list[str]) -> list[str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    return lines + out.splitlines()


@pytest.mark.slow
def test_daemon_sleeps_outside_its_window_and_stops_on_sigterm(baseline_ws):
    store = baseline_ws.store
    before = len(store.cycles())
    proc = _daemon(baseline_ws, "--now", "12:00")
    lines: list[str] = []
    _until(proc, lines, "outside the training window 01:00-05:00 (local time 12:00); sleeping")
    time.sleep(1)  # several polls pass, and still nothing starts
    lines = _terminate(proc, lines)
    assert "stopped cleanly" in lines[-1]
    assert len(store.cycles()) == before and store.open_cycle() is None
    actions = store.audit_entries()["action"].tolist()
    assert actions[-2:] == ["daemon_started", "daemon_stopped"]


@pytest.mark.slow
def test_daemon_waits_at_the_gate_and_resumes_after_a_decision(pending_ws):
    ws, gate_id = pending_ws
    proc = _daemon(ws, "--now", "02:30")
    lines: list[str] = []
    _until(proc, lines, f"waits at promotion gate {gate_id} for a decision")
    assert ws.store.alias("production") == "v1"
    approve_as(ws, gate_id, comment="night shift approves")
    _until(proc, lines, "done for tonight (1 cycle(s) in window 01:00-05:00)")
    lines = _terminate(proc, lines)
    assert any("cycle 2 done (production: v2)" in line for line in lines)
    assert ws.store.alias("production") == "v2" and ws.store.open_cycle() is None


def test_stop_request_halts_a_cycle_at_a_stage_boundary(pending_ws):
    ws, gate_id = pending_ws
    approve_as(ws, gate_id)
    open_ = ws.store.open_cycle()
    outcome = cycle.resume(ws, progress=False, stop=lambda: True)
    assert outcome.status == "stopped" and "resume continues it" in outcome.message
    assert ws.store.cycle(open_["id"])["stage"] == open_["stage"]  # nothing half-done
    assert cycle.resume(ws, progress=False).status == "done"


@pytest.mark.parametrize("window, at, inside", [
    ("01:00-05:00", "00:59", False), ("01:00-05:00", "01:00", True), ("01:00-05:00", "04:59", True),
    ("01:00-05:00", "05:00", False), ("22:00-02:00", "23:00", True), ("22:00-02:00", "01:30", True),
    ("22:00-02:00", "02:00", False), ("22:00-02:00", "12:00", False)])
def test_windows_may_wrap_midnight(window, at, inside):
    night = night_of(window, datetime.fromisoformat(f"2026-03-10T{at}"))
    assert (night is not None) == inside
    if window.startswith("22") and at == "01:30":
        assert night == datetime(2026, 3, 9, 22, 0)  # the night that began yesterday


def test_bad_window_is_refused():
    with pytest.raises(ConfigError, match="daemon.window"):
        parse_config({"daemon": {"window": "25:00-26:00"}})
    with pytest.raises(ConfigError, match="empty"):
        parse_config({"daemon": {"window": "02:00-02:00"}})
