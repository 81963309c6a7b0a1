"""Verifying the append-only audit log: each entry is MACed with the workspace's key over the hash of the one
before it, and a sealed head names the last entry. Verification says which kind of damage it found."""
from __future__ import annotations

import hmac
import json
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from core import atomic, auditkey
from core.store import GENESIS_HASH, Store, entry_hash, entry_mac

# downgraded: a keyed log made to look as if from before keys; rekeyed: it names another key than the one it
# was keyed with; redirected: its workspace id is not an id (a path to a key its writer chose); unkeyed: a log
# from before keys, which anyone who can write the database could have rewritten (accepted only on request).
CASES = ("intact", "altered", "deleted", "reordered", "truncated", "unverifiable", "downgraded", "rekeyed",
         "redirected", "unkeyed")
ENTRY_FIELDS = ("seq", "at", "actor", "action", "subject", "detail", "prev_hash", "hash")


@dataclass(frozen=True)
class AuditLog:
    """What verification reads, from a workspace or from an exported copy."""
    entries: list[dict]  # seq, at (datetime), actor, action, subject, detail, prev_hash, hash; by seq
    head: str | None
    workspace_id: str | None
    keyed_from: int | None  # first keyed seq; None for a log from before keys
    key_check: str | None


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    entries: int
    first_bad_seq: int | None = None
    problem: str = ""
    case: str = "intact"  # one of CASES
    keyed_from: int | None = None
    key_path: str | None = None


def verify_log(log: AuditLog, accept_legacy: bool = False, marker: str | None = None) -> ChainReport:
    """marker: the id the workspace was keyed with, from beside the keys (auditkey.read_marker); None where
    there is none (an export read elsewhere). accept_legacy: accept a log from before keys, whose plain chain
    proves nothing against someone who can write the database; a log that was ever keyed never passes unkeyed."""
    n, keyed_from, workspace_id = len(log.entries), log.keyed_from, log.workspace_id
    path = None

    def broken(case: str, seq: int | None, problem: str) -> ChainReport:
        return ChainReport(False, n, seq, problem, case, keyed_from, str(path) if path else None)

    if workspace_id is not None and not auditkey.well_formed(workspace_id):
        return broken("redirected", keyed_from or 1, f"the log's workspace id {workspace_id!r} is not an Evolab "
                                                     f"workspace id (32 hex digits): it would read the key from a "
                                                     f"file its writer chose")
    if marker is not None and (workspace_id is None or keyed_from is None):
        return broken("downgraded", 1, f"this workspace was keyed as {marker} (recorded beside its key), but its "
                                       f"log now claims to be unkeyed: its key identity was removed")
    if marker is not None and workspace_id != marker:
        return broken("rekeyed", keyed_from, f"this workspace was keyed as {marker} (recorded beside its key), but "
                                             f"its log names {workspace_id}: it was re-keyed")
    if keyed_from is None:
        keyed = next((e["seq"] for e in log.entries if e["action"] == "audit_keyed"), None)
        if workspace_id is not None or keyed is not None:
            why = "names a workspace id" if workspace_id is not None else f"records its keying at entry {keyed}"
            return broken("downgraded", keyed or 1, f"the log {why} but says it is unkeyed: its key identity was "
                                                    f"removed")
        if not accept_legacy:
            return broken("unkeyed", 1, f"the log is not keyed: its {n} entries are chained with plain SHA-256, "
                                        f"which anyone who can write the database could recompute (accept a log "
                                        f"from before audit keys with --accept-legacy)")
    path = auditkey.key_path(workspace_id) if keyed_from is not None else None
    key = b""
    if keyed_from is not None:
        if path is None:
            return broken("unverifiable", keyed_from, "the log is keyed but names no workspace id, so its key "
                                                      f"cannot be found (set {auditkey.ENV} to the key file)")
        try:
            key = auditkey.read_key(path)
        except auditkey.AuditKeyError as err:
            return broken("unverifiable", keyed_from, f"{err}; without it entries from {keyed_from} on "
                                                      f"cannot be checked")
        if log.key_check != auditkey.key_check(key, log.workspace_id or ""):
            return broken("unverifiable", keyed_from, f"the key at {path} does not match this log's key check "
                                                      f"(a wrong key file, or the log was re-keyed)")

    hashes = {e["hash"] for e in log.entries}
    prev, expected = GENESIS_HASH, 1
    for e in log.entries:
        seq, action = e["seq"], e["action"]
        if seq < expected:
            return broken("altered", seq, f"entry {seq} appears twice")
        if seq > expected:
            gone = f"entry {expected} was" if seq == expected + 1 else f"entries {expected}-{seq - 1} were"
            return broken("deleted", expected, f"{gone} deleted")
        fields = (e["prev_hash"], e["at"], e["actor"], action, e["subject"], e["detail"])
        sealed = entry_hash(*fields) if keyed_from is None or seq < keyed_from else entry_mac(key, *fields)
        if not hmac.compare_digest(sealed, str(e["hash"])):
            return broken("altered", seq, f"entry {seq} ({action}) was altered")
        if e["prev_hash"] != prev:
            # Every entry so far is genuine, so a link to another genuine entry means they were moved; a link
            # to no entry means the one it followed is gone and the rest were renumbered.
            if e["prev_hash"] in hashes:
                return broken("reordered", seq, f"entry {seq} ({action}) does not follow entry {seq - 1}: "
                                                f"entries were reordered")
            return broken("deleted", seq, f"the entry before {seq} ({action}) was deleted and later ones "
                                          f"renumbered")
        prev, expected = e["hash"], seq + 1

    last = expected - 1
    if log.head is None:
        if n or keyed_from is not None:
            return broken("truncated", last + 1, f"the log's head is missing, so entries after {last} may "
                                                 f"have been deleted")
        return ChainReport(True, 0)
    parts = log.head.split(":")
    if len(parts) < 2 or not parts[0].isdigit():
        return broken("altered", last + 1, f"the log's head is malformed: {log.head!r}")
    head_seq, head_hash = int(parts[0]), parts[1]
    if keyed_from is not None:
        seal = parts[2] if len(parts) > 2 else ""
        if not hmac.compare_digest(seal, auditkey.head_mac(key, f"{head_seq}:{head_hash}", keyed_from)):
            return broken("truncated", last + 1, f"the log's head (entry {head_seq}) is not sealed with this "
                                                 f"workspace's key: it was forged, so entries after {last} may "
                                                 f"have been deleted")
    if head_seq > last:
        gone = f"entry {last + 1} was" if head_seq == last + 1 else f"entries {last + 1}-{head_seq} were"
        return broken("truncated", last + 1, f"{gone} deleted from the end (the log's head is entry {head_seq})")
    if head_seq < last or head_hash != prev:
        return broken("altered", head_seq + 1 if head_seq < last else last,
                      f"the log's head names entry {head_seq} but the log ends at entry {last} "
                      f"(an older head was put back, or entries were added without it)")
    return ChainReport(True, n, keyed_from=keyed_from, key_path=str(path) if path else None)


def from_store(store: Store) -> AuditLog:
    frame, meta = store.audit_snapshot()
    entries = [{"seq": int(r.seq), "at": r.at.to_pydatetime(), "actor": r.actor, "action": r.action,
                "subject": r.subject, "detail": r.detail, "prev_hash": r.prev_hash, "hash": r.hash}
               for r in frame.itertuples()]
    keyed_from = meta.get("audit_keyed_from")
    return AuditLog(entries, meta.get("audit_head"), meta.get("workspace_id"),
                    int(keyed_from) if keyed_from is not None else None, meta.get("audit_key_check"))


def verify(store: Store, accept_legacy: bool = False) -> ChainReport:
    return verify_log(from_store(store), accept_legacy, auditkey.read_marker(store.path))


def export(store: Store, out: Path) -> int:
    """One JSON line for the log's identity, one per entry, and the head last: a copy that can be verified
    elsewhere with the key (`audit verify --file`)."""
    log = from_store(store)
    lines = [{"record": "log", "workspace_id": log.workspace_id, "keyed_from": log.keyed_from,
              "key_check": log.key_check}]
    lines += [{"record": "entry", **e, "at": e["at"].isoformat()} for e in log.entries]
    lines.append({"record": "head", "head": log.head})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out, "".join(json.dumps(line) + "\n" for line in lines))
    return len(log.entries)


def read_export(path: Path) -> AuditLog:
    ident, entries, head = None, [], None
    with open(path, encoding="utf-8") as fh:
        for num, text in enumerate(fh, 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
                kind = line.pop("record")
                if kind == "entry":
                    entries.append({**{k: line[k] for k in ENTRY_FIELDS}, "seq": int(line["seq"]),
                                    "at": datetime.fromisoformat(line["at"])})
                elif kind == "log":
                    ident = line
                elif kind == "head":
                    head = line["head"]
            except (ValueError, KeyError, TypeError, AttributeError):
                raise ValueError(f"{path}:{num}: not a line of an Evolab audit export") from None
    if ident is None:
        raise ValueError(f"{path}: not an Evolab audit export (no log record; make one with `audit export`)")
    entries.sort(key=lambda e: e["seq"])
    return AuditLog(entries, head, ident.get("workspace_id"), ident.get("keyed_from"), ident.get("key_check"))


def verify_file(path: Path, accept_legacy: bool = False) -> ChainReport:
    return verify_log(read_export(path), accept_legacy)


def describe(detail: str) -> str:
    try:
        return json.dumps(json.loads(detail), sort_keys=True)
    except (TypeError, ValueError):
        return printable(str(detail))


def printable(text) -> str:
    """A field of an entry for a terminal: control, format and line-separator characters escaped (a newline in
    a name would otherwise print a forged entry below its own)."""
    return "".join(ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) in UNPRINTABLE else ch
                   for ch in str(text))


UNPRINTABLE = ("Cc", "Cf", "Zl", "Zp")
