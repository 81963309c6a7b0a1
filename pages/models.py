"""Models: every version with its lineage, where the aliases point and have pointed, and rollback.

Rollback goes through core.actions.rollback as the signed-in approver, and only to a version that was
production before (core.actions.rollback_targets).
"""
import streamlit as st

from app import queries, session
from core.auth import AuthError
from core.store import StoreConflict

ws = queries.workspace_path()
st.title("Models")

versions = queries.versions(ws)
if versions.empty:
    st.info(f"No model version yet: the first cycle trains one (`python -m core evolve --workspace {ws}`).")
    st.stop()


def roll_back() -> None:
    """Form callback: the signed-in approver points production at a version that was production before."""
    from core import actions, registry  # imports torch: pay for it only when someone rolls back
    from core.model import ModelIntegrityError

    version = st.session_state["rollback_version"]
    try:
        who = session.acting()
        previous = actions.rollback(queries.workspace(ws), who, version)
    except (AuthError, registry.NoModelError, ModelIntegrityError, StoreConflict, ValueError, KeyError) as err:
        st.session_state["models_flash"] = ("error", f"Rollback refused: {err}")
    else:
        st.session_state["models_flash"] = ("success", f"production: {previous or '-'} → {version} (by {who.name})")
    queries.clear()


flash = st.session_state.pop("models_flash", None)
if flash:
    (st.success if flash[0] == "success" else st.error)(flash[1])

aliases = queries.aliases(ws)
cols = st.columns(max(1, len(aliases)))
for col, row in zip(cols, aliases.itertuples()):
    col.metric(row.name, row.version or "-", help=f"moved {queries.when(row.updated_at)}")

st.subheader("Versions")
st.dataframe(versions.sort_values("num", ascending=False), hide_index=True, column_config={
    "best_val_acc": st.column_config.NumberColumn(format="%.4f"),
    "gate_accuracy": st.column_config.NumberColumn("gate estimate", format="%.4f",
                                                   help="accuracy on the held-out rows only the gates read")})

st.subheader("Alias history")
st.dataframe(queries.alias_history(ws).sort_values("id", ascending=False), hide_index=True)

st.subheader("Roll back production")
production = queries.alias(ws, "production")
targets = queries.rollback_targets(ws)
if not targets:
    st.caption("No version to roll back to: only a version that was production before, and is not now, can be.")
elif who := session.actor():
    with st.form("rollback"):
        st.selectbox("Version", targets, index=len(targets) - 1, key="rollback_version",
                     help=f"production is {production or '-'}; only versions that were production before are "
                          "offered; their files are checked before the alias moves")
        st.form_submit_button("Roll back", on_click=roll_back, key="rollback_submit")
