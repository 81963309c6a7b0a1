"""Who is signed in to this dashboard session, and whether they may act now.

A session holds the `Principal` that `core.auth.authenticate` returned for the name and password typed into
the sign-in form (the same users and argon2 hashes as the CLI). Every rerun of app/main.py calls `begin`:
it re-reads the user, so a removed user is signed out and a changed role applies at once, and it keeps the
time of the last rerun. A session idle for longer than `ui.idle_timeout_minutes` turns stale: pages still
read, but no action runs until the password is typed again (`confirm`).

Pages read it in one line: `who = session.actor()` is the approver who may act now, or None (and the page
hides its controls); form callbacks call `session.acting()`, which raises instead, since a callback runs
before main.py has looked at the clock. The actions themselves go through core.actions, which checks the role
again and writes the audit entry.
"""
from __future__ import annotations

import time

import streamlit as st

from core import auth
from core.auth import AuthError, Principal
from core.workspace import Workspace

USER, LAST_ACTIVE, STALE, TIMEOUT = "principal", "last_active", "session_stale", "idle_timeout_s"
KEEP = ("workspace",)  # what survives a sign-out: the workspace is the server's, not the user's


def current() -> Principal | None:
    who = st.session_state.get(USER)
    return who if isinstance(who, Principal) else None  # only sign_in puts one there


def sign_in(ws: Workspace, name: str, password: str) -> Principal:
    """Check the password like the CLI does; AuthError carries core.auth's one refusal message."""
    who = auth.authenticate(ws.store, name, password, "dashboard:sign_in")
    ws.store.audit(who.name, "signed_in", "dashboard", {"role": who.role})
    st.session_state[USER] = who
    st.session_state[STALE] = False
    st.session_state[LAST_ACTIVE] = time.time()
    return who


def confirm(ws: Workspace, password: str) -> Principal:
    """Re-sign-in after the idle timeout: the signed-in name with its password typed again."""
    who = current()
    if who is None:
        raise AuthError(auth.REFUSED)
    return sign_in(ws, who.name, password)


def sign_out() -> None:
    """Drop the principal and everything the session built (a prepared export, half-typed forms)."""
    for key in list(st.session_state):
        if key not in KEEP:
            del st.session_state[key]


def begin(ws: Workspace) -> Principal | None:
    """Once per rerun, before any page: the signed-in principal as the store knows it now, or None."""
    who = current()
    if who is None:
        return None
    user = ws.store.user(who.name)
    if user is None:  # removed while signed in
        sign_out()
        return None
    if user["role"] != who.role:
        who = st.session_state[USER] = Principal(user["name"], user["role"])
    st.session_state[TIMEOUT] = ws.config().ui.idle_timeout_minutes * 60
    if idle():
        st.session_state[STALE] = True
    elif not stale():
        st.session_state[LAST_ACTIVE] = time.time()
    return who


def idle() -> bool:
    """Longer than the timeout since the last rerun (a live chart's fragment refresh is not activity)."""
    last = st.session_state.get(LAST_ACTIVE)
    timeout = st.session_state.get(TIMEOUT)
    return last is None or (timeout is not None and time.time() - last > timeout)


def stale() -> bool:
    """Signed in, but idle past the timeout: the password is needed again before any action."""
    return current() is not None and (st.session_state.get(STALE, False) or idle())


def idle_minutes() -> float:
    return (st.session_state.get(TIMEOUT) or 0) / 60


def actor() -> Principal | None:
    """For a page: the approver who may act now, or None after saying why the controls are hidden."""
    who = current()
    if who is None:
        return None
    if not who.approver:
        st.info(f"signed in as {who.name} ({who.role}): read only", icon=":material/visibility:")
        return None
    if stale():
        st.caption("Enter your password again at the top of the page to act.")
        return None
    return who


def labeler() -> Principal | None:
    """For the labeling queue: the approver or labeler who may label now, or None (a viewer, a stale session)."""
    who = current()
    if who is None or not who.labeler or stale():
        return None
    return who


def acting() -> Principal:
    """For a form callback: the approver who may act now, or AuthError. The role is checked again by
    core.actions; this adds the idle check, made against the previous rerun's clock."""
    who = current()
    if who is None:
        raise AuthError("not signed in")
    if stale():
        st.session_state[STALE] = True
        raise AuthError(f"idle for more than {idle_minutes():g} minutes: enter your password again to act")
    return who
