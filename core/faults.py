"""Crash points for resilience tests: EVOLAB_FAULT=<point> makes the process SIGKILL itself there.

A real kill -9 at a chosen instant cannot be timed from outside (a promotion lasts milliseconds), so the
tests name the instant and the process dies exactly as it would under `kill -9`.
"""
from __future__ import annotations

import os
import signal


def crash_point(name: str) -> None:
    if os.environ.get("EVOLAB_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
