"""The audit page: the chain's verdict in words, and the log."""
from __future__ import annotations

import pandas as pd

from app.queries.shared import _cached, _store
from core import audit


CHAIN_CASES = {"intact": "intact", "altered": "an entry was altered", "deleted": "entries were deleted",
               "reordered": "entries were reordered", "truncated": "entries were cut from the end",
               "unverifiable": "it cannot be checked without its key",
               "downgraded": "its key identity was removed to pass it off as unkeyed",
               "rekeyed": "it names another key than the one it was keyed with",
               "redirected": "its workspace id points the key lookup elsewhere",
               "unkeyed": "it is not keyed, so it could have been rewritten"}


@_cached
def audit_chain(ws: str) -> dict:
    """The audit chain's verdict for people: audit_check's fields plus what kind of damage, and since which entry
    the log is sealed with the workspace's key (None: plain hashes, a log from before keys)."""
    report = audit.verify(_store(ws))
    return {"ok": report.ok, "entries": report.entries, "first_bad_seq": report.first_bad_seq,
            "problem": report.problem, "case": CHAIN_CASES.get(report.case, report.case),
            "keyed_from": report.keyed_from}


@_cached
def audit_log(ws: str) -> pd.DataFrame:
    frame = _store(ws).audit_entries()
    return frame[["seq", "at", "actor", "action", "subject", "detail"]]


@_cached
def audit_check(ws: str) -> dict:
    report = audit.verify(_store(ws))
    return {"ok": report.ok, "entries": report.entries, "first_bad_seq": report.first_bad_seq,
            "problem": report.problem}
