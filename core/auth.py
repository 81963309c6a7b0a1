"""Who may do what: approvers and viewers with salted slow password hashes, sign-in that does not tell who
exists, lockout with a growing delay, and API tokens stored only as salted hashes.

Unknown names and wrong passwords get one refusal message and the same argon2 work (a dummy hash is
verified for unknown names), so neither the text nor the time of a refusal says whether a name exists.
Failed sign-ins are counted per name (known or not): after LOCK_AFTER in a row the name is locked for a
delay that doubles with each further failure. The audit log gets one entry per name and window, not one per
guess, so a flood cannot bury it.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from core.store import Store, utcnow

ROLES = ("approver", "labeler", "viewer")  # a labeler answers label requests and does nothing else
# Names the engine and the automatic policies write into the audit log: a person must not be mistaken for them.
# Names appear as actors in the audit log beside `token:NAME` and the engine's own names: no ':' or spaces.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
RESERVED_NAMES = frozenset({"auto", "auto-approve", "engine", "cli", "system", "test", "?", "dashboard", "server",
                            "daemon", "first-user"})
REFUSED = "wrong name or password"
LOCK_AFTER = 5
BASE_DELAY_S, MAX_DELAY_S = 30.0, 900.0  # 30 s after 5 failures in a row, doubling to 15 min
WINDOW_S = 600.0
# Failed sign-ins audited per window across all names: past it one `auth_flood` entry, then only counts, so
# many distinct names cannot bury the log (each name alone is audited once per window).
GLOBAL_AUDITED = 50
_hasher = PasswordHasher()  # argon2id with a random salt per hash
_DUMMY = _hasher.hash(secrets.token_hex(16))


class AuthError(PermissionError):
    pass


@dataclass(frozen=True)
class Principal:
    """Someone whose password was checked: what the dashboard keeps for a session, the CLI for one command."""
    name: str
    role: str

    @property
    def approver(self) -> bool:
        return self.role == "approver"

    @property
    def labeler(self) -> bool:
        """May answer label requests: a labeler or an approver."""
        return self.role in ("approver", "labeler")


def _check_new_user(name: str, role: str, password: str) -> str:
    name = name.strip()
    if not name:
        raise ValueError("a user needs a name")
    if not NAME.fullmatch(name):
        raise ValueError(f"user name '{name}': use letters, digits and . _ @ - (at most 64, starting with a "
                         "letter or digit)")
    if name.lower() in RESERVED_NAMES:
        raise ValueError(f"'{name}' is reserved for the engine's own entries in the audit log; pick another name")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not '{role}'")
    if len(password) < 8:
        raise ValueError("password must have at least 8 characters")
    return name


def add_user(store: Store, name: str, role: str, password: str, actor: str = "cli") -> None:
    """Low level: no credential check. core.actions.add_user is the guarded path every caller uses."""
    name = _check_new_user(name, role, password)
    store.add_user(name, role, _hasher.hash(password), actor)


def recorded_name(name: str) -> str:
    """How a name someone typed appears in the audit log: as typed when it could be a user's name, else a digest,
    so a newline or an engine's name (`engine`, `auto`) cannot forge an entry."""
    if NAME.fullmatch(name) and name.lower() not in RESERVED_NAMES:
        return name
    return "name-sha256:" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def authenticate(store: Store, name: str, password: str, action: str) -> Principal:
    """The checked identity behind a name and password, or AuthError with one message for every failure."""
    name = (name or "").strip()
    counted = recorded_name(name)  # failures are counted and audited under this
    state = store.auth_failure(counted) if name else None
    if state and state.get("locked_until") and utcnow() < state["locked_until"]:
        wait = (state["locked_until"] - utcnow()).total_seconds()
        raise AuthError(f"{REFUSED} (too many failed attempts for this name: try again in {wait:.0f}s)")
    user = store.user(name) if name else None
    try:
        _hasher.verify(user["password_hash"] if user else _DUMMY, password or "")
        ok = user is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        ok = False
    if not ok:
        store.record_auth_failure(counted, action, WINDOW_S, LOCK_AFTER, BASE_DELAY_S, MAX_DELAY_S, GLOBAL_AUDITED)
        raise AuthError(REFUSED)
    if state:
        store.clear_auth_failures(counted)
    return Principal(user["name"], user["role"])


def require_role(store: Store, who: Principal, action: str, roles: tuple[str, ...] = ("approver",)) -> None:
    if who.role not in roles:
        wanted = " or ".join(f"{'an' if r[0] in 'aeiou' else 'a'} {r}" for r in roles)
        store.audit(who.name, "auth_refused", action, {"reason": f"'{who.name}' is a {who.role}, not {wanted}"})
        raise AuthError(f"'{who.name}' is a {who.role}, not {wanted}")


# -- API tokens -------------------------------------------------------------------------------------------
# A token is `evl_<id>_<secret>`: the id (12 hex digits, public, shown by `tokens list`) finds its row, the
# secret (32 random bytes) is checked by HMAC-SHA256 under a salt of its own. A secret that random needs no
# slow hash, and a fast one means a request carrying a known id and a guess costs the server microseconds,
# where argon2 cost 0.2 s and 64 MiB per request before anyone was authenticated.
TOKEN_PREFIX = "evl_"
TOKEN_HASH = "hmac-sha256"
TOKEN_ID = re.compile(r"[0-9a-f]{12}")


def new_token(store: Store, name: str, actor: str) -> str:
    """A fresh token, returned once: only its id and the keyed hash of its secret are stored."""
    name = name.strip()
    if not NAME.fullmatch(name):  # it appears in the audit log as token:NAME
        raise ValueError(f"token name '{name}': use letters, digits and . _ @ - (at most 64, starting with a "
                         "letter or digit)")
    public, secret, salt = TOKEN_PREFIX + secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_hex(16)
    store.add_token(name, f"{TOKEN_HASH}${salt}${_token_mac(salt, secret)}", public, actor)
    return f"{public}_{secret}"


def _token_mac(salt: str, secret: str) -> str:
    return hmac.new(bytes.fromhex(salt), secret.encode("utf-8"), hashlib.sha256).hexdigest()


def split_token(token: str | None) -> tuple[str, str] | None:
    """(public part `evl_<id>`, secret) of a well-formed token, else None."""
    if not token or not token.startswith(TOKEN_PREFIX):
        return None
    token_id, sep, secret = token[len(TOKEN_PREFIX):].partition("_")
    if not sep or not secret or not TOKEN_ID.fullmatch(token_id):
        return None
    return TOKEN_PREFIX + token_id, secret


def token_matches(token_hash: str, secret: str) -> bool:
    """A token made before ids (an argon2 hash) never matches: rotate it (`tokens add`, then `tokens revoke`)."""
    scheme, _, rest = token_hash.partition("$")
    salt, _, digest = rest.partition("$")
    if scheme != TOKEN_HASH or not salt or not digest:
        return False
    return hmac.compare_digest(_token_mac(salt, secret), digest)
