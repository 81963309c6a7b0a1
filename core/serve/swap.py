"""Hot swap: watch a few keys in the store (the production alias and the production scaffold), and when
any changes, build what they name in the background and hand it over as one reference.

Requests read that reference once and keep using what they read, so a request in flight finishes on the
old model while new requests get the new one; nothing is restarted and nothing is dropped. A build that
fails (damaged weights, say) leaves the old one serving and is tried again when the keys change; one that
found the store busy is tried again at the next poll.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Generic, TypeVar

import duckdb

from core.store import StoreBusy

log = logging.getLogger("evolab.serve")

T = TypeVar("T")
Keys = dict[str, "str | None"]


def store_busy(err: BaseException) -> bool:
    """Another process holds the store: nothing is wrong with what we asked, ask again later."""
    return isinstance(err, StoreBusy) or (isinstance(err, (duckdb.IOException, duckdb.ConnectionException))
                                          and "lock" in str(err).lower())


class HotSwap(Generic[T]):
    def __init__(self, watch: dict[str, Callable[[], str | None]], build: Callable[[Keys], T],
                 poll_s: float = 0.5):
        self.watch, self.build, self.poll_s = watch, build, poll_s
        self.keys: Keys = {}
        self.current: T | None = None
        self.swaps = 0
        self.last_error: str | None = None
        self._failed: Keys | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read_keys(self) -> Keys:
        return {name: read() for name, read in self.watch.items()}

    def check(self) -> bool:
        """One poll: rebuild and swap if a key moved. Returns whether a swap happened."""
        keys = self.read_keys()
        if keys == self.keys or keys == self._failed:
            return False
        try:
            built = self.build(keys)
        except Exception as err:
            if store_busy(err):
                log.warning("hot swap to %s postponed, the store is busy: %s", keys, err)
                return False
            self._failed, self.last_error = keys, f"{type(err).__name__}: {err}"
            log.error("hot swap to %s failed, still serving %s: %s", keys, self.keys, err)
            return False
        first = self.current is None
        self.current, self.keys, self._failed, self.last_error = built, keys, None, None
        if not first:
            self.swaps += 1
            log.warning("hot swap: now serving %s", keys)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception as err:  # a store read that failed: poll again next time
                log.warning("hot swap poll failed: %s", err)

    def start(self) -> None:
        if self.current is None:  # the first build happens before any request is served, and may fail
            keys = self.read_keys()
            self.current, self.keys = self.build(keys), keys
        self._thread = threading.Thread(target=self._run, name="hot-swap", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
