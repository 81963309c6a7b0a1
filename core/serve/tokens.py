"""Which API token a request carries, without touching the store on the request path.

The active tokens (name, public part, keyed hash) are read at start and re-read by a HotSwap whenever the set
of active token names changes, so a revocation takes effect within `serve.poll_s`. A request's token is found
by its public id and checked with one HMAC (core.auth.token_matches): no slow hash runs for anyone unsigned.
"""
from __future__ import annotations

import logging

from core.auth import TOKEN_HASH, split_token, token_matches
from core.serve.swap import HotSwap, Keys
from core.workspace import Workspace

log = logging.getLogger("evolab.serve")


class TokenSet:
    def __init__(self, rows: list[tuple[str, str, str]]):
        self.rows = rows  # (name, public part, hash) of every active token
        self.names = frozenset(name for name, _, _ in rows)
        self._by_id: dict[str, list[tuple[str, str]]] = {}
        for name, public, token_hash in rows:
            if not token_hash.startswith(TOKEN_HASH + "$"):
                log.warning("API token '%s' was made before token ids and is no longer accepted: rotate it "
                            "(`tokens add NAME-2`, move the client, `tokens revoke %s`)", name, name)
                continue
            self._by_id.setdefault(public, []).append((name, token_hash))

    def name_for(self, token: str | None) -> str | None:
        parts = split_token(token)
        if parts is None:
            return None
        public, secret = parts
        return next((name for name, token_hash in self._by_id.get(public, ()) if token_matches(token_hash, secret)),
                    None)


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
