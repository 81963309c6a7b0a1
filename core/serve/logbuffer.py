"""Production logs kept in memory and written to the store in batches by one background thread.

A request never waits for DuckDB to log: it appends rows under a lock and returns. The flusher writes a batch
every `interval_s` (sooner once `flush_rows` wait) in one transaction, keeps the batch when the store is
busy and tries again, and flushes what is left on shutdown. A batch the store refuses `max_flush_failures`
times in a row (a row it cannot write, not a lock) is set aside in a file, so it does not hold newer rows
back forever.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

import pandas as pd

from core import atomic
from core.config import ServeConfig
from core.serve.swap import store_busy
from core.store import Store, StoreBusy, utcnow

log = logging.getLogger("evolab.serve")

# Ids of predictions this process logged recently, so feedback on them needs no store read.
RECENT_IDS = 200_000


class LogFull(RuntimeError):
    """Too many corrections wait for the store; they are refused rather than dropped (503)."""


class LogBuffer:
    def __init__(self, store: Store, cfg: ServeConfig, rejected_dir: Path):
        self.store, self.cfg, self.rejected_dir = store, cfg, Path(rejected_dir)
        self._lock = threading.Lock()
        self._predictions: list[dict] = []
        self._feedback: list[dict] = []
        self._retry: tuple[int, int] | None = None  # (predictions, feedback) at the head that failed last flush
        self._in_flight_feedback = 0
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._reading = threading.Lock()
        self._busy_until = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.flushed_predictions = 0
        self.flushed_feedback = 0
        self.dropped = 0
        self.flush_errors = 0
        self.failures = 0  # flushes in a row the store refused for another reason than a lock
        self.refused_feedback = 0
        self.set_aside_batches = 0
        self.set_aside_rows = 0

    # -- request side: cheap, never waits long for the store -----------------------------------
    def add_predictions(self, rows: list[dict]) -> None:
        with self._lock:
            self._predictions.extend(rows)
            for row in rows:
                self._recent[row["id"]] = None
            while len(self._recent) > RECENT_IDS:
                self._recent.popitem(last=False)
            self._trim()
            full = len(self._predictions) + len(self._feedback) >= self.cfg.flush_rows
        if full:
            self._wake.set()

    def add_feedback(self, row: dict) -> None:
        with self._lock:
            waiting = len(self._feedback) + self._in_flight_feedback
            if waiting >= self.cfg.max_buffered_feedback:
                self.refused_feedback += 1
                raise LogFull(f"{waiting:,} corrections are waiting for the workspace database already")
            self._feedback.append(row)

    def knows(self, prediction_id: str) -> bool:
        """Whether a prediction id exists, buffered or stored (the store is read only for old ids).
        Raises StoreBusy at once while the store is known to be busy, and after `store_patience_s` otherwise."""
        with self._lock:
            if prediction_id in self._recent:
                return True
        # One request at a time waits on a busy store; those queued behind it learn the answer from it.
        if not self._reading.acquire(timeout=self.store.patience_s):
            raise StoreBusy("the workspace database is busy (another request is waiting for it)")
        try:
            if not self.busy():
                return prediction_id in self.store.known_predictions([prediction_id])
        except Exception as err:
            if not store_busy(err):
                raise
            self._busy_until = time.monotonic() + self.cfg.retry_after_s
        finally:
            self._reading.release()
        raise StoreBusy("the workspace database is busy (another process holds it)")

    def busy(self) -> bool:
        """Whether the store was found busy within the last `retry_after_s` and not written since."""
        return time.monotonic() < self._busy_until

    def pending(self) -> int:
        with self._lock:
            return len(self._predictions) + len(self._feedback)

    def _trim(self) -> None:
        # Bounded memory while the store stays locked for long: the oldest predictions go first.
        over = len(self._predictions) - self.cfg.max_buffered_rows
        if over > 0:
            del self._predictions[:over]
            self.dropped += over
            if self._retry:
                self._retry = (max(0, self._retry[0] - over), self._retry[1])

    # -- the flusher ----------------------------------------------------------------------------
    def flush(self, final: bool = False) -> int:
        """Write one batch in one transaction: every row waiting, or the batch the store refused last time alone
        (so newer rows are not refused with it). final: set aside whatever fails (shutdown). Returns rows written."""
        with self._lock:
            n_pred, n_fb = self._retry or (len(self._predictions), len(self._feedback))
            predictions, feedback = self._predictions[:n_pred], self._feedback[:n_fb]
            del self._predictions[:n_pred], self._feedback[:n_fb]
            self._in_flight_feedback = n_fb
            if not predictions and not feedback:
                self._retry = None
                return 0
        try:
            self.store.log_production(pd.DataFrame(predictions, columns=Store.PREDICTION_COLUMNS),
                                      pd.DataFrame(feedback, columns=Store.FEEDBACK_COLUMNS))
        except Exception as err:
            self._failed(predictions, feedback, err, final)
            return 0
        with self._lock:
            self._retry, self._in_flight_feedback = None, 0
        self.failures, self._busy_until = 0, 0.0
        self.flushed_predictions += len(predictions)
        self.flushed_feedback += len(feedback)
        return len(predictions) + len(feedback)

    def _failed(self, predictions: list[dict], feedback: list[dict], err: Exception, final: bool) -> None:
        self.flush_errors += 1
        busy = store_busy(err)
        if busy:  # nothing wrong with the batch: keep it however long the lock lasts
            self._busy_until = time.monotonic() + self.cfg.retry_after_s
        else:
            self.failures += 1
        if final or self.failures >= self.cfg.max_flush_failures:
            try:
                path = self._set_aside(predictions, feedback)
            except OSError as write_err:
                log.error("could not set a failing production log batch aside, keeping it: %s", write_err)
            else:
                why = "at shutdown" if final else f"after {self.failures} failed flushes in a row"
                log.warning("production log batch of %d predictions and %d corrections set aside in %s %s: %s",
                            len(predictions), len(feedback), path, why, err)
                with self._lock:
                    self._retry, self._in_flight_feedback = None, 0
                self.failures = 0
                return
        else:
            log.warning("production log flush failed (%s), will retry: %s",
                        "store busy" if busy else f"{self.failures} of {self.cfg.max_flush_failures}", err)
        with self._lock:  # back at the head, in order, and retried alone
            self._predictions[:0] = predictions
            self._feedback[:0] = feedback
            self._in_flight_feedback = 0
            if not busy:
                self._retry = (len(predictions), len(feedback))
            self._trim()

    def _set_aside(self, predictions: list[dict], feedback: list[dict]) -> Path:
        """The batch as JSON lines ({"table": ..., **row}), written whole or not at all."""
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        path = self.rejected_dir / f"{utcnow():%Y%m%dT%H%M%S}-{os.getpid()}-{self.set_aside_batches + 1}.jsonl"
        rows = [{"table": "predictions", **row} for row in predictions] + \
               [{"table": "feedback", **row} for row in feedback]
        atomic.write_text(path, "".join(json.dumps(row, default=str) + "\n" for row in rows))
        self.set_aside_batches += 1
        self.set_aside_rows += len(rows)
        return path

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.cfg.flush_interval_s)
            self._wake.clear()
            self.flush()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="log-flusher", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the flusher and write what is left; what the store refuses now is set aside, not lost."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        left = None
        while self.pending() and self.pending() != left:  # stop when a flush neither writes nor sets aside
            left = self.pending()
            self.flush(final=True)
