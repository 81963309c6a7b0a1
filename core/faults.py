"""Crash points for resilience tests.

EVOLAB_FAULT=<point> makes the process SIGKILL itself at that point, exactly as `kill -9` would;
EVOLAB_FAULT=raise:<point> raises InjectedFault there instead (a stage that fails). EVOLAB_FAULT_SKIP=N lets
the first N passes through the point go by, so a point inside a loop (every stage start, every checkpoint)
can hit a later pass. A real kill -9 at a chosen instant cannot be timed from outside (a promotion lasts
milliseconds), so the tests name the instant.
"""
from __future__ import annotations

import os
import signal

# Every point the code passes through; the crash soak picks among these.
POINTS = ("stage_start", "stage_end", "checkpoint_saved", "before_rename", "train_before_register",
          "promote_start", "promote_before_commit", "scaffold_added_before_eval")

_passes: dict[str, int] = {}


class InjectedFault(RuntimeError):
    pass


def crash_point(name: str) -> None:
    wanted = os.environ.get("EVOLAB_FAULT")
    if not wanted or wanted.rpartition(":")[2] != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] <= int(os.environ.get("EVOLAB_FAULT_SKIP", "0")):
        return
    if wanted.startswith("raise:"):
        raise InjectedFault(f"fault injected at {name}")
    os.kill(os.getpid(), signal.SIGKILL)
