"""`python -m core daemon`: the engine on its own at night.

Inside the training window (local time, may wrap midnight) it runs up to `cycles_per_night` cycles, then up to
`scaffold_searches_per_night` scaffold searches; when the re-test after a promotion found the plain model
better than the production scaffold, it first tries the plain model through the scaffold_adoption gate. At a
gate it waits for a person and resumes once they decide; outside the window it sleeps. SIGTERM (or
Ctrl-C) stops it at the next stage boundary: every stage commits its output and the next stage together,
so a later `resume` (or the next night) continues exactly there. The clock is injectable (`--now`,
EVOLAB_DAEMON_NOW) so tests need not wait for the night.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, time as dtime, timedelta
from typing import Callable

import pandas as pd
from pydantic import ValidationError

from core import cycle
from core.config import ConfigError, DaemonConfig, describe, parse_window
from core.scaffolds import archive, spec as S
from core.store import utcnow
from core.workspace import Workspace, WorkspaceError

ACTOR = "daemon"
NOW_ENV = "EVOLAB_DAEMON_NOW"


@dataclass(frozen=True)
class Settings:
    window: str
    poll_s: float
    cycles_per_night: int
    clock: Callable[[], datetime]
    scaffold_searches_per_night: int = 0


def fixed_clock(text: str) -> Callable[[], datetime]:
    """'HH:MM' (today) or an ISO timestamp: a clock that always says that time."""
    try:
        at = datetime.combine(datetime.now().date(), dtime.fromisoformat(text)) if len(text) <= 8 \
            else datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--now '{text}' is neither HH:MM nor an ISO timestamp") from None
    return lambda: at


def settings(cfg: DaemonConfig, window: str | None = None, poll_s: float | None = None,
             cycles_per_night: int | None = None, now: str | None = None) -> Settings:
    """The configured settings with command-line overrides, validated by the config's own rules; the clock
    is real unless told otherwise."""
    overrides = {key: value for key, value in
                 {"window": window, "poll_s": poll_s, "cycles_per_night": cycles_per_night}.items()
                 if value is not None}
    try:
        cfg = DaemonConfig(**{**cfg.model_dump(), **overrides})
    except ValidationError as err:
        raise ConfigError(describe(err)) from None
    now = now or os.environ.get(NOW_ENV)
    return Settings(cfg.window, cfg.poll_s, cfg.cycles_per_night, fixed_clock(now) if now else datetime.now,
                    cfg.scaffold_searches_per_night)


def plain_trial_due(store) -> dict | None:
    """The newest re-test after a promotion when it found the plain model better than the production scaffold,
    that scaffold is still in production and no scaffold cycle began after it; else None."""
    retests = store.scaffold_retests()
    if retests.empty:
        return None
    newest = retests.iloc[-1]
    if not json.loads(newest["result"]).get("plain_better") or \
            archive.production_id(store) != newest["production_id"]:
        return None
    cycles = store.cycles()
    later = cycles[(cycles["kind"] == "scaffold") & (cycles["id"] > int(newest["cycle_id"]))]
    return None if len(later) else {"cycle_id": int(newest["cycle_id"]), "production_id": newest["production_id"]}


def night_of(window: str, at: datetime) -> datetime | None:
    """When the window occurrence containing `at` began, or None outside the window."""
    start, end = parse_window(window)
    minute = at.hour * 60 + at.minute
    midnight = datetime.combine(at.date(), dtime())
    if start < end:
        return midnight + timedelta(minutes=start) if start <= minute < end else None
    if minute >= start:
        return midnight + timedelta(minutes=start)
    return midnight - timedelta(days=1) + timedelta(minutes=start) if minute < end else None


def _waiting_gate(ws: Workspace, cycle_id: int) -> dict | None:
    """The cycle's pending gate, unless its deadline has passed (then resuming lets it expire)."""
    pending = ws.store.gates("pending")
    rows = pending[pending["cycle_id"] == cycle_id]
    if rows.empty:
        return None
    gate = rows.iloc[0]
    overdue = pd.notna(gate["deadline"]) and pd.Timestamp(gate["deadline"]) <= pd.Timestamp(utcnow())
    return None if overdue else {"id": int(gate["id"]), "kind": gate["kind"]}


class Daemon:
    def __init__(self, ws: Workspace, s: Settings, out=sys.stdout):
        self.ws, self.s, self.out = ws, s, out
        self.stop = threading.Event()
        self.ended: dict[datetime, int] = {}  # model cycles finished per night (window occurrence)
        self.searched: dict[datetime, int] = {}  # scaffold searches finished per night

    def say(self, text: str) -> None:
        print(f"{datetime.now():%Y-%m-%d %H:%M:%S} daemon: {text}", file=self.out, flush=True)

    def step(self) -> tuple[str, bool]:
        """One look at the clock and the workspace: (what happened, whether to look again at once)."""
        now = self.s.clock()
        night = night_of(self.s.window, now)
        if night is None:
            return f"outside the training window {self.s.window} (local time {now:%H:%M}); sleeping", False
        store = self.ws.store
        open_ = store.open_cycle()
        if open_ is not None:
            gate = _waiting_gate(self.ws, open_["id"]) if open_["status"] == "waiting" else None
            if gate:
                return f"cycle {open_['id']} waits at {gate['kind']} gate {gate['id']} for a decision", False
            outcome = cycle.resume(self.ws, progress=True, stop=self.stop.is_set)
        elif (plain := plain_trial_due(store)) is not None:
            self.say(f"the re-test after cycle {plain['cycle_id']}'s promotion found the plain model better than "
                     f"scaffold {plain['production_id']}: trying it through the scaffold_adoption gate")
            outcome = cycle.run_scaffold_cycle(self.ws, candidate=S.DEFAULT, progress=True)
        elif self.ended.get(night, 0) < self.s.cycles_per_night:
            outcome = cycle.evolve(self.ws, cycles=1, progress=True, stop=self.stop.is_set)[-1]
        elif self.searched.get(night, 0) < self.s.scaffold_searches_per_night:
            # counted when it starts: one that waits at its gate is finished by the resume branch above
            self.searched[night] = self.searched.get(night, 0) + 1
            outcome = cycle.run_scaffold_cycle(self.ws, progress=True)
        else:
            searches = f", {self.searched.get(night, 0)} scaffold search(es)" \
                if self.s.scaffold_searches_per_night else ""
            return f"done for tonight ({self.ended[night]} cycle(s){searches} in window {self.s.window})", False
        if outcome.status in ("done", "rejected") and store.cycle(outcome.cycle_id)["kind"] == "evolve":
            self.ended[night] = self.ended.get(night, 0) + 1
        return outcome.message, outcome.status in ("done", "rejected")

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        self.ws.store.audit(ACTOR, "daemon_started", "workspace", {"window": self.s.window, "pid": os.getpid(),
                                                                   "cycles_per_night": self.s.cycles_per_night})
        self.say(f"started: window {self.s.window}, up to {self.s.cycles_per_night} cycle(s) a night, "
                 f"{self.s.scaffold_searches_per_night} scaffold search(es), checking every {self.s.poll_s:g}s")
        last = None
        while not self.stop.is_set():
            try:
                message, again = self.step()
            except WorkspaceError as err:  # another engine holds the workspace: try again later
                message, again = str(err), False
            except Exception as err:  # a failing cycle must not spin: report it and wait a poll
                message, again = f"cycle failed: {type(err).__name__}: {err}", False
            if message != last:
                self.say(message)
                last = message
            if not again:
                self.stop.wait(self.s.poll_s)
        self.ws.store.audit(ACTOR, "daemon_stopped", "workspace", {"pid": os.getpid()})
        self.say("stopped cleanly")
        return 0


def run(ws: Workspace, s: Settings) -> int:
    return Daemon(ws, s).run()
