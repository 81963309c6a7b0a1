"""People: users and their roles, failed sign-ins and lockouts, API tokens."""
from __future__ import annotations

import pandas as pd

from core.store.base import StoreConflict, _first, utcnow

ALL_NAMES = "*"  # auth_failures' row that counts failed sign-ins across every name


class UsersMixin:
    # -- users --------------------------------------------------------------------------------
    def add_user(self, name: str, role: str, password_hash: str, actor: str) -> None:
        with self._tx() as con:
            if con.execute("SELECT 1 FROM users WHERE name = ?", [name]).fetchone():
                raise StoreConflict(f"user '{name}' already exists")
            con.execute("INSERT INTO users VALUES (?, ?, ?, ?)", [name, role, password_hash, utcnow()])
            self._audit(con, actor, "user_added", f"user:{name}", {"role": role})

    def user(self, name: str) -> dict | None:
        return _first(self._read("SELECT * FROM users WHERE name = ?", [name]))

    def approver_count(self) -> int:
        return int(self._read("SELECT count(*) FROM users WHERE role = 'approver'").iloc[0, 0])

    def set_role(self, name: str, role: str, actor: str) -> str:
        with self._tx() as con:
            row = con.execute("SELECT role FROM users WHERE name = ?", [name]).fetchone()
            if row is None:
                raise KeyError(f"no user '{name}'")
            self._keep_an_approver(con, name, role)
            con.execute("UPDATE users SET role = ? WHERE name = ?", [role, name])
            self._audit(con, actor, "user_role_changed", f"user:{name}", {"from": row[0], "to": role})
            return row[0]

    def remove_user(self, name: str, actor: str) -> None:
        with self._tx() as con:
            row = con.execute("SELECT role FROM users WHERE name = ?", [name]).fetchone()
            if row is None:
                raise KeyError(f"no user '{name}'")
            self._keep_an_approver(con, name, None)
            con.execute("DELETE FROM users WHERE name = ?", [name])
            con.execute("DELETE FROM auth_failures WHERE name = ?", [name])
            self._audit(con, actor, "user_removed", f"user:{name}", {"role": row[0]})

    @staticmethod
    def _keep_an_approver(con, name: str, new_role: str | None) -> None:
        """A workspace that has had an approver keeps one: otherwise nobody could decide a gate again."""
        others = con.execute("SELECT count(*) FROM users WHERE role = 'approver' AND name <> ?", [name]).fetchone()[0]
        if new_role != "approver" and not others:
            raise StoreConflict(f"'{name}' is the last approver; add another approver first")

    def auth_failure(self, name: str) -> dict | None:
        return _first(self._read("SELECT * FROM auth_failures WHERE name = ?", [name]))

    def record_auth_failure(self, name: str, action: str, window_s: float, lock_after: int, base_delay_s: float,
                            max_delay_s: float, global_audited: int) -> dict:
        """Count a failed sign-in for `name` (known or not). The first failure of each window is audited, with
        the count of the window before; a lockout is audited when it starts. A flood stays a few entries: across
        all names at most `global_audited` per window, then one `auth_flood` entry (the row named ALL_NAMES
        counts them; no user name can be '*')."""
        from datetime import timedelta

        with self._tx() as con:
            now = utcnow()
            row = con.execute("SELECT window_start, window_count, consecutive FROM auth_failures WHERE name = ?",
                              [name]).fetchone()
            start, count, consecutive = row if row else (None, 0, 0)
            new_window = start is None or (now - start).total_seconds() > window_s
            previous = count if new_window else None
            start, count, consecutive = (now if new_window else start), (1 if new_window else count + 1), consecutive + 1
            locked_until = None
            if consecutive >= lock_after:
                delay = min(max_delay_s, base_delay_s * 2 ** (consecutive - lock_after))
                locked_until = now + timedelta(seconds=delay)
            con.execute("INSERT OR REPLACE INTO auth_failures VALUES (?, ?, ?, ?, ?)",
                        [name, start, count, consecutive, locked_until])
            # all names together: window_count failures, consecutive the entries audited in this window
            row = con.execute("SELECT window_start, window_count, consecutive FROM auth_failures WHERE name = ?",
                              [ALL_NAMES]).fetchone()
            if row is None or (now - row[0]).total_seconds() > window_s:
                row = (now, 0, 0)
            g_start, g_failures, g_audited = row[0], row[1] + 1, row[2]
            if new_window or consecutive == lock_after:
                if g_audited < global_audited:
                    detail = {"failures_in_window": count, "consecutive": consecutive, "window_s": window_s}
                    if previous:
                        detail["failures_in_previous_window"] = previous
                    if locked_until is not None:
                        detail["locked_until"] = locked_until.isoformat()
                    self._audit(con, name or "?", "auth_refused", action, detail)
                elif g_audited == global_audited:
                    self._audit(con, "engine", "auth_flood", "sign-in", {
                        "failures_in_window": g_failures, "window_s": window_s, "audited_in_window": g_audited,
                        "note": "further failed sign-ins in this window are counted, not audited one by one"})
                g_audited += 1
            con.execute("INSERT OR REPLACE INTO auth_failures VALUES (?, ?, ?, ?, NULL)",
                        [ALL_NAMES, g_start, g_failures, g_audited])
            return {"consecutive": consecutive, "locked_until": locked_until}

    def clear_auth_failures(self, name: str) -> None:
        with self._tx() as con:
            con.execute("DELETE FROM auth_failures WHERE name = ?", [name])

    # -- API tokens (only a salted hash is kept) ------------------------------------------------------
    def add_token(self, name: str, token_hash: str, prefix: str, actor: str) -> None:
        with self._tx() as con:
            if con.execute("SELECT 1 FROM api_tokens WHERE name = ?", [name]).fetchone():
                raise StoreConflict(f"token '{name}' already exists (revoke it, or pick another name)")
            con.execute("INSERT INTO api_tokens VALUES (?, ?, ?, ?, ?, NULL, NULL)",
                        [name, token_hash, prefix, utcnow(), actor])
            self._audit(con, actor, "token_added", f"token:{name}", {"prefix": prefix})

    def revoke_token(self, name: str, actor: str) -> None:
        with self._tx() as con:
            row = con.execute("SELECT revoked_at FROM api_tokens WHERE name = ?", [name]).fetchone()
            if row is None:
                raise KeyError(f"no token '{name}'")
            if row[0] is not None:
                raise StoreConflict(f"token '{name}' was already revoked")
            con.execute("UPDATE api_tokens SET revoked_at = ?, revoked_by = ? WHERE name = ?", [utcnow(), actor, name])
            self._audit(con, actor, "token_revoked", f"token:{name}", {})

    def tokens(self, active_only: bool = False) -> pd.DataFrame:
        where = "WHERE revoked_at IS NULL" if active_only else ""
        return self._read(f"SELECT * FROM api_tokens {where} ORDER BY name")

    def users(self) -> pd.DataFrame:
        return self._read("SELECT name, role, created_at FROM users ORDER BY name")
