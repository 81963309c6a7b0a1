"""Which API token a request carries, without touching the store on the request path.

The active tokens (name, prefix, salted hash) are read at start and re-read by a HotSwap whenever the set
of active token names changes, so a revocation takes effect within `serve.poll_s`. A token's argon2 check
is slow by design; a token seen once is remembered by its SHA-256 for as long as its name stays active.
"""
from __future__ import annotations

import hashlib
import threading

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from core.auth import TOKEN_PREFIX
from core.serve.swap import HotSwap, Keys
from core.workspace import Workspace

_hasher = PasswordHasher()


class TokenSet:
    def __init__(self, rows: list[tuple[str, str, str]]):
        self.rows = rows  # (name, prefix, hash) of every active token
        self.names = frozenset(name for name, _, _ in rows)
        self._seen: dict[str, str] = {}
        self._lock = threading.Lock()

    def name_for(self, token: str | None) -> str | None:
        if not token or not token.startswith(TOKEN_PREFIX):
            return None
        digest = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            if digest in self._seen:
                return self._seen[digest]
        for name, prefix, token_hash in self.rows:
            if prefix != token[:len(prefix)]:
                continue
            try:
                _hasher.verify(token_hash, token)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                continue
            with self._lock:
                self._seen[digest] = name
            return name
        return None


class Tokens:
    def __init__(self, ws: Workspace, poll_s: float):
        store = ws.store

        def active() -> str:
            return ",".join(store.tokens(active_only=True)["name"].tolist())

        def build(_: Keys) -> TokenSet:
            frame = store.tokens(active_only=True)
            return TokenSet(list(zip(frame["name"], frame["prefix"], frame["token_hash"])))

        self.swap: HotSwap[TokenSet] = HotSwap({"active_tokens": active}, build, poll_s)

    def start(self) -> None:
        self.swap.start()

    def close(self) -> None:
        self.swap.close()

    def name_for(self, token: str | None) -> str | None:
        return self.swap.current.name_for(token)
