"""Models: every version with its lineage, where the aliases point and have pointed, and rollback."""
import streamlit as st

from app import queries
from core import auth
from core.store import StoreConflict

ws = queries.workspace_path()
st.title("Models")

versions = queries.versions(ws)
if versions.empty:
    st.info(f"No model version yet: the first cycle trains one (`python -m core evolve --workspace {ws}`).")
    st.stop()


def roll_back() -> None:
    """Form callback: an approver, with their password, points production at an earlier version."""
    from core import registry  # imports torch: pay for it only when someone rolls back
    from core.model import ModelIntegrityError

    version, by = st.session_state["rollback_version"], st.session_state.get("rollback_by", "").strip()
    try:
        auth.require_approver(queries.workspace(ws).store, by, st.session_state.get("rollback_password", ""),
                              f"version:{version}")
        previous = registry.rollback(queries.workspace(ws), version, actor=by)
    except (auth.AuthError, registry.NoModelError, ModelIntegrityError, StoreConflict, KeyError) as err:
        st.session_state["models_flash"] = ("error", f"Rollback refused: {err}")
    else:
        st.session_state["models_flash"] = ("success", f"production: {previous or '-'} → {version} (by {by})")
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
choices = [v for v in versions["version"] if v != production]
if not choices:
    st.caption("No other version to roll back to.")
else:
    with st.form("rollback"):
        st.selectbox("Version", choices, index=len(choices) - 1, key="rollback_version",
                     help=f"production is {production or '-'}; its files are checked before the alias moves")
        c1, c2 = st.columns(2)
        c1.text_input("Your name", key="rollback_by")
        c2.text_input("Password", type="password", key="rollback_password")
        st.form_submit_button("Roll back", on_click=roll_back)
