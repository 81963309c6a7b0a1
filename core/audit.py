"""Verifying the append-only audit log: each entry carries the hash of the one before it."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from core.store import GENESIS_HASH, Store, entry_hash


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    entries: int
    first_bad_seq: int | None = None
    problem: str = ""


def verify_entries(entries: pd.DataFrame, head: str | None) -> ChainReport:
    prev, expected = GENESIS_HASH, 1
    for row in entries.itertuples():
        if row.seq != expected:
            return ChainReport(False, len(entries), expected, f"entry {expected} was deleted")
        if row.prev_hash != prev:
            return ChainReport(False, len(entries), row.seq, f"entry {row.seq} does not follow entry {expected - 1}")
        if entry_hash(prev, row.at.to_pydatetime(), row.actor, row.action, row.subject, row.detail) != row.hash:
            return ChainReport(False, len(entries), row.seq, f"entry {row.seq} ({row.action}) was altered")
        prev, expected = row.hash, expected + 1
    if head is not None:
        head_seq, head_hash = head.split(":", 1)
        if int(head_seq) != expected - 1 or head_hash != prev:
            return ChainReport(False, len(entries), expected, f"entries after {expected - 1} were deleted "
                                                              f"(the log's head is entry {head_seq})")
    return ChainReport(True, len(entries))


def verify(store: Store) -> ChainReport:
    return verify_entries(store.audit_entries(), store.audit_head())


def describe(detail: str) -> str:
    try:
        return json.dumps(json.loads(detail), sort_keys=True)
    except (TypeError, ValueError):
        return str(detail)
