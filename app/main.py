"""Dashboard entry: `streamlit run app/main.py -- --workspace W` (or set EVOLAB_WORKSPACE).

Builds the navigation and the session's shared state (the workspace path, who is signed in); the pages in
`pages/` do the rest. Until someone signs in (app/session.py) it shows the sign-in form and nothing else.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # streamlit puts app/ on the path, the pages import app.* and core.*
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app import nav, session  # noqa: E402
from app.queries import shared  # noqa: E402
from core import __version__  # noqa: E402
from core.auth import AuthError  # noqa: E402
from core.store import StoreBusy  # noqa: E402
from core.workspace import WorkspaceError, open_workspace  # noqa: E402

st.set_page_config(page_title="Evolab", page_icon=":material/model_training:", layout="wide",
                   menu_items={"About": f"**Evolab {__version__}**: a model improves itself while people watch "
                                        "every step and approve or reject each promotion of its weights.",
                               "Get help": None, "Report a bug": None})

path = shared.workspace_from_args()
if not path:
    st.error(f"No workspace given. Start the dashboard with `streamlit run app/main.py -- --workspace W` "
             f"or set {shared.ENV_VAR}.")
    st.stop()
try:
    ws = open_workspace(path)
except WorkspaceError as err:
    st.error(str(err))
    st.stop()
st.session_state["workspace"] = str(ws.root.resolve())


def submit(form: str) -> None:
    """Callback of the sign-in form ("signin") and the re-sign-in form ("confirm"): the password leaves the
    session state whatever the outcome."""
    password = st.session_state.get(f"{form}_password", "")
    st.session_state[f"{form}_password"] = ""
    try:
        if form == "signin":
            session.sign_in(ws, st.session_state.get("signin_name", ""), password)
        else:
            session.confirm(ws, password)
    except AuthError as err:
        st.session_state[f"{form}_error"] = str(err)
    except StoreBusy as err:
        st.session_state[f"{form}_error"] = f"The workspace is busy, try again in a moment. ({err})"


try:
    who = session.begin(ws)
except StoreBusy as err:
    st.warning(f"The workspace is busy, try again in a moment. ({err})")
    st.stop()

if who is None:
    st.title("Evolab: sign in")
    error = st.session_state.pop("signin_error", None)
    if error:
        st.error(error)
    with st.form("sign_in"):
        st.text_input("Name", key="signin_name")
        st.text_input("Password", type="password", key="signin_password")
        st.form_submit_button("Sign in", type="primary", on_click=submit, args=("signin",), key="signin_submit")
    if ws.store.users().empty:
        st.info(f"This workspace has no users yet. Add the first approver with "
                f"`python -m core users add NAME --role approver --workspace {ws.root}`.")
    st.stop()

page = st.navigation([st.Page(script, title=title, icon=icon, default=(name == "overview"))
                      for name, (script, title, icon) in nav.PAGES.items()])
st.sidebar.markdown(f"Signed in as **{who.name}** ({who.role})")


def pending_badge() -> None:
    """On every page: how many decisions wait for a person (gates, and texts waiting for a label)."""
    try:
        counts = shared.pending_counts(st.session_state["workspace"])
    except StoreBusy:
        st.sidebar.markdown(":gray-badge[:material/hourglass_top: updating…]")
        return
    gates, labels = counts["gates"], counts["label_requests"]
    if not gates and not labels:
        st.sidebar.markdown(":green-badge[:material/check: no decision pending]")
        return
    badges = [f":red-badge[:material/gavel: {gates} decision{'' if gates == 1 else 's'} pending]"] if gates else []
    badges += [f":orange-badge[:material/label: {labels} label{'' if labels == 1 else 's'} wanted]"] if labels else []
    st.sidebar.markdown(" ".join(badges))


pending_badge()
st.sidebar.button("Sign out", on_click=session.sign_out, icon=":material/logout:", key="sign_out")
st.sidebar.caption(f"Workspace `{st.session_state['workspace']}`")
if who.approver and session.stale():  # a viewer has no action to guard
    st.warning(f"Idle for more than {session.idle_minutes():g} minutes: enter your password again before acting.",
               icon=":material/lock_clock:")
    error = st.session_state.pop("confirm_error", None)
    if error:
        st.error(error)
    with st.form("confirm"):
        st.text_input(f"Password for {who.name}", type="password", key="confirm_password")
        st.form_submit_button("Sign in again", on_click=submit, args=("confirm",), key="confirm_submit")
try:
    page.run()
except StoreBusy:  # the engine held the database past the Store's patience: say so, do not crash, read again
    st.info("Updating… the engine is writing to the workspace; this page reads it again in a few seconds.",
            icon=":material/hourglass_top:")
    time.sleep(shared.TTL_S)
    st.rerun()
