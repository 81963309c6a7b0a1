"""Dashboard entry: `streamlit run app/main.py -- --workspace W` (or set EVOLAB_WORKSPACE).

Builds the navigation and the session's shared state (the workspace path); the pages in `pages/` do the rest.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # streamlit puts app/ on the path, the pages import app.* and core.*
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app import nav, queries  # noqa: E402
from core.store import StoreBusy  # noqa: E402
from core.workspace import WorkspaceError, open_workspace  # noqa: E402

st.set_page_config(page_title="Evolab", page_icon=":material/model_training:", layout="wide")

path = queries.workspace_from_args()
if not path:
    st.error(f"No workspace given. Start the dashboard with `streamlit run app/main.py -- --workspace W` "
             f"or set {queries.ENV_VAR}.")
    st.stop()
try:
    ws = open_workspace(path)
except WorkspaceError as err:
    st.error(str(err))
    st.stop()
st.session_state["workspace"] = str(ws.root.resolve())

page = st.navigation([st.Page(script, title=title, icon=icon, default=(name == "overview"))
                      for name, (script, title, icon) in nav.PAGES.items()])
st.sidebar.caption(f"Workspace `{st.session_state['workspace']}`")
try:
    page.run()
except StoreBusy as err:  # the engine held the database past the Store's patience: say so, do not crash
    st.warning(f"The workspace is busy, try again in a moment. ({err})")
