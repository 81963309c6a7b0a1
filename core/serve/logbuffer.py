"""Production logs kept in memory and written to the store in batches by one background thread.

A request never waits for DuckDB: it appends rows under a lock and returns. The flusher writes a batch
every `interval_s` (sooner once `flush_rows` wait) in one transaction, keeps the batch when the store is
busy and tries again, and flushes what is left on shutdown.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict

import pandas as pd

from core.store import Store

log = logging.getLogger("evolab.serve")

# Ids of predictions this process logged recently, so feedback on them needs no store read.
RECENT_IDS = 200_000


class LogBuffer:
    def __init__(self, store: Store, interval_s: float = 1.0, flush_rows: int = 1000, max_rows: int = 200_000):
        self.store, self.interval_s, self.flush_rows, self.max_rows = store, interval_s, flush_rows, max_rows
        self._lock = threading.Lock()
        self._predictions: list[dict] = []
        self._feedback: list[dict] = []
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.flushed_predictions = 0
        self.flushed_feedback = 0
        self.dropped = 0
        self.flush_errors = 0

    # -- request side: cheap, never touches the store ------------------------------------------
    def add_predictions(self, rows: list[dict]) -> None:
        with self._lock:
            self._predictions.extend(rows)
            for row in rows:
                self._recent[row["id"]] = None
            while len(self._recent) > RECENT_IDS:
                self._recent.popitem(last=False)
            self._trim()
            full = len(self._predictions) + len(self._feedback) >= self.flush_rows
        if full:
            self._wake.set()

    def add_feedback(self, row: dict) -> None:
        with self._lock:
            self._feedback.append(row)
            self._trim()

    def knows(self, prediction_id: str) -> bool:
        """Whether a prediction id exists, buffered or stored (the store is read only for old ids)."""
        with self._lock:
            if prediction_id in self._recent:
                return True
        return prediction_id in self.store.known_predictions([prediction_id])

    def pending(self) -> int:
        with self._lock:
            return len(self._predictions) + len(self._feedback)

    def _trim(self) -> None:
        # Bounded memory while the store stays locked for long: the oldest predictions go first.
        over = len(self._predictions) + len(self._feedback) - self.max_rows
        if over > 0:
            del self._predictions[:over]
            self.dropped += over

    # -- the flusher ----------------------------------------------------------------------------
    def flush(self) -> int:
        with self._lock:
            predictions, feedback = self._predictions, self._feedback
            self._predictions, self._feedback = [], []
        if not predictions and not feedback:
            return 0
        try:
            self.store.log_production(pd.DataFrame(predictions, columns=Store.PREDICTION_COLUMNS),
                                      pd.DataFrame(feedback, columns=Store.FEEDBACK_COLUMNS))
        except Exception as err:  # keep the batch (in order, ahead of newer rows) and try again later
            self.flush_errors += 1
            log.warning("production log flush failed, will retry: %s", err)
            with self._lock:
                self._predictions[:0] = predictions
                self._feedback[:0] = feedback
                self._trim()
            return 0
        self.flushed_predictions += len(predictions)
        self.flushed_feedback += len(feedback)
        return len(predictions) + len(feedback)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self.flush()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="log-flusher", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the flusher and write what is left."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()
