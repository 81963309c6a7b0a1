"""Model versions by name: written once, verified on every load, reached through moving aliases."""
from __future__ import annotations

from core import model as M
from core.errors import NoModelError  # noqa: F401 (raised here; callers may import it from here)
from core.workspace import Workspace


def load(ws: Workspace, version: str) -> M.Loaded:
    row = ws.store.version(version)
    if row is None:
        raise NoModelError(f"no model version '{version}' in this workspace")
    return M.load_version(ws.models / version, row["files"], version)


def load_alias(ws: Workspace, alias: str = "production") -> M.Loaded:
    version = ws.store.alias(alias)
    if not version:
        raise NoModelError(f"no {alias} model yet (run `python -m core evolve` and approve its gate)")
    return load(ws, version)


def rollback(ws: Workspace, version: str, actor: str) -> str | None:
    row = ws.store.version(version)
    if row is None:
        raise NoModelError(f"no model version '{version}' in this workspace")
    M.verify_files(ws.models / version, row["files"], version)  # never point production at damaged weights
    return ws.store.rollback(version, actor, reason=f"rollback to {version}")
