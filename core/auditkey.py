"""The audit log's key: 32 random bytes in a file outside the workspace, one file per workspace.

Anyone who can write the workspace's database can recompute a plain hash chain from end to end. Entries
MACed with a key kept elsewhere (as Vault keys its audit log) cannot be forged by rewriting the database
alone. Without the key a log is reported unverifiable, never accepted.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

ENV = "EVOLAB_AUDIT_KEY_FILE"

# Entries are written inside other transactions, so the key is read once per process. Cached by path too,
# since EVOLAB_AUDIT_KEY_FILE may point the same workspace id at another file.
_cache: dict[tuple[str, str], bytes] = {}


class AuditKeyError(RuntimeError):
    """The audit key is missing or unreadable: no entry can be written to a keyed log, nor verified."""


def new_workspace_id() -> str:
    return secrets.token_hex(16)


def key_path(workspace_id: str | None) -> Path | None:
    """EVOLAB_AUDIT_KEY_FILE when set, else `$XDG_CONFIG_HOME/evolab/audit-keys/<workspace id>.key`."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    if not workspace_id:
        return None
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "evolab" / "audit-keys" / f"{workspace_id}.key"


def create_key(workspace_id: str) -> Path:
    """Write a new key (mode 0600, folder 0700) unless the file exists: EVOLAB_AUDIT_KEY_FILE may be shared
    by several workspaces, and replacing it would make the other logs unverifiable."""
    path = key_path(workspace_id)
    if path.exists():
        read_key(path)
        return path
    folder = path.parent
    if not folder.exists():
        folder.mkdir(parents=True)
        os.chmod(folder, 0o700)  # mkdir's mode is cut by the umask; set it exactly
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
