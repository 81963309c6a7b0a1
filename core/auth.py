"""Approvers and viewers: salted slow password hashes, and the check every decision goes through."""
from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError, VerifyMismatchError, InvalidHashError

from core.store import Store

ROLES = ("approver", "viewer")
_hasher = PasswordHasher()  # argon2id with a random salt per hash


class AuthError(PermissionError):
    pass


def add_user(store: Store, name: str, role: str, password: str, actor: str = "cli") -> None:
    name = name.strip()
    if not name:
        raise ValueError("a user needs a name")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not '{role}'")
    if len(password) < 8:
        raise ValueError("password must have at least 8 characters")
    store.add_user(name, role, _hasher.hash(password), actor)


def require_approver(store: Store, name: str, password: str, action: str) -> None:
    """Raise AuthError unless name is an approver with this password; every refusal is audited."""
    user = store.user(name)
    reason = None
    if user is None:
        reason = f"unknown user '{name}'"
    else:
        try:
            _hasher.verify(user["password_hash"], password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            reason = f"wrong password for '{name}'"
        else:
            if user["role"] != "approver":
                reason = f"'{name}' is a {user['role']}, not an approver"
    if reason:
        store.audit(name or "?", "auth_refused", action, {"reason": reason})
        raise AuthError(reason)
