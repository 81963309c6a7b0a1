"""The audit log's key: 32 random bytes in a file outside the workspace, one file per workspace.

Anyone who can write the workspace's database can recompute a plain hash chain from end to end. Entries
MACed with a key kept elsewhere (as Vault keys its audit log) cannot be forged by rewriting the database
alone. Without the key a log is reported unverifiable, never accepted.

The database also says which key is its own (the workspace id), and whoever can write it could delete that
id to pass the log off as one from before keys, or point it at a key they wrote. So the id must be well
formed (32 hex digits, never a path), and a marker beside the keys, named after the database's location,
records the id a workspace was keyed with: a log whose marker names another id, or none, was tampered with.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

ENV = "EVOLAB_AUDIT_KEY_FILE"
WORKSPACE_ID = re.compile(r"[0-9a-f]{32}")  # what new_workspace_id makes: nothing that can name a path

# Entries are written inside other transactions, so the key is read once per process. Cached by path too,
# since EVOLAB_AUDIT_KEY_FILE may point the same workspace id at another file.
_cache: dict[tuple[str, str], bytes] = {}


class AuditKeyError(RuntimeError):
    """The audit key is missing or unreadable: no entry can be written to a keyed log, nor verified."""


def new_workspace_id() -> str:
    return secrets.token_hex(16)


def well_formed(workspace_id: str | None) -> bool:
    return isinstance(workspace_id, str) and WORKSPACE_ID.fullmatch(workspace_id) is not None


def _keys_folder() -> Path:
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "evolab" / "audit-keys"


def key_path(workspace_id: str | None) -> Path | None:
    """EVOLAB_AUDIT_KEY_FILE when set, else `$XDG_CONFIG_HOME/evolab/audit-keys/<workspace id>.key`."""
    if workspace_id is not None and not well_formed(workspace_id):
        # the id comes from the database: '../x' or '/tmp/x' would read a key its writer chose
        raise AuditKeyError(f"the audit log's workspace id {workspace_id!r} is not an Evolab workspace id "
                            f"(32 hex digits)")
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    if not workspace_id:
        return None
    return _keys_folder() / f"{workspace_id}.key"


def marker_path(database: Path) -> Path:
    """Where the id a workspace was keyed with is kept, beside the keys (never in the workspace), named after
    the database's resolved location (hashed: one file name whatever the path)."""
    where = hashlib.sha256(str(Path(database).resolve()).encode()).hexdigest()[:32]
    return _keys_folder() / "workspaces" / f"{where}.id"


def read_marker(database: Path) -> str | None:
    """The id this workspace was keyed with, or None where it has no marker (a log from before markers, or a
    copy of a workspace not yet written at its new place)."""
    try:
        text = marker_path(database).read_text(encoding="ascii").split()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise AuditKeyError(f"audit marker {marker_path(database)} cannot be read: {err}") from None
    return text[0] if text else ""


def write_marker(database: Path, workspace_id: str, replace: bool = False) -> None:
    """Record that the workspace at `database` is keyed as `workspace_id`. An existing marker is kept unless
    `replace` (init, which makes a new workspace where none is): the marker is what a re-keyed log is caught by."""
    if not well_formed(workspace_id):
        raise AuditKeyError(f"{workspace_id!r} is not an Evolab workspace id")
    path = marker_path(database)
    if path.exists() and not replace:
        return
    _private_folder(path.parent)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:  # the id, and the database's path for a person reading the folder
        os.write(fd, f"{workspace_id}\n{Path(database).resolve()}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def forget_marker(database: Path) -> None:
    marker_path(database).unlink(missing_ok=True)


def _private_folder(folder: Path) -> None:
    if not folder.exists():
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)  # mkdir's mode is cut by the umask; set it exactly


def create_key(workspace_id: str) -> Path:
    """Write a new key (mode 0600, folder 0700) unless the file exists: EVOLAB_AUDIT_KEY_FILE may be shared
    by several workspaces, and replacing it would make the other logs unverifiable."""
    path = key_path(workspace_id)
    if path.exists():
        read_key(path)
        return path
    folder = path.parent
    _private_folder(folder)
    tmp = folder / f".{path.name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (secrets.token_hex(32) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        # Atomic like a rename, but a key another process wrote meanwhile is kept, never replaced.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the new name survives a power cut
    finally:
        os.close(dir_fd)
    return path


def read_key(path: Path) -> bytes:
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise AuditKeyError(f"no audit key at {path}: restore the key file from its backup "
                            f"(or set {ENV} to where it is)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise AuditKeyError(f"audit key {path} cannot be read: {err}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise AuditKeyError(f"{path} is not an Evolab audit key (64 hex digits)")
    return key


def cached_key(workspace_id: str) -> bytes:
    path = key_path(workspace_id)
    slot = (workspace_id, str(path))
    if slot not in _cache:
        _cache[slot] = read_key(path)
    return _cache[slot]


def mac(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).hexdigest()


def head_mac(key: bytes, head: str, keyed_from: int) -> str:
    # keyed_from is sealed with the head, so moving the plain/keyed boundary shows.
    return mac(key, f"head:{head}:keyed-from:{keyed_from}")


def key_check(key: bytes, workspace_id: str) -> str:
    """Stored in the database so that a wrong key reads as unverifiable rather than as every entry altered."""
    return mac(key, f"key-check:{workspace_id}")
