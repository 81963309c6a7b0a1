"""A workspace folder: `evolab.duckdb`, `config.toml`, `models/`, `checkpoints/`, and the engine lock."""
from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from core import atomic
from core.config import Config, dump_config, load_config
from core.store import Store


class WorkspaceError(RuntimeError):
    pass


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def db(self) -> Path:
        return self.root / "evolab.duckdb"

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def store(self) -> Store:
        return Store(self.db)

    def config(self) -> Config:
        return load_config(self.config_path)

    def save_config(self, config: Config, actor: str = "cli", accept: frozenset[str] | None = None) -> None:
        """Write config.toml and record the change. Low level, like auth.add_user: the caller vouches for
        every key it writes unless `accept` names the only ones it does (actions.config_set: the key set)."""
        atomic.write_text(self.config_path, dump_config(config))
        if self.db.exists():
            audit_config(self, actor, accept)


def open_workspace(path: str | Path) -> Workspace:
    root = Path(path)
    if not (root / "config.toml").is_file() or not (root / "evolab.duckdb").is_file():
        raise WorkspaceError(f"no Evolab workspace at {root} (create one with `python -m core init`)")
    ws = Workspace(root)
    ws.config()  # refuse a broken config before any work starts
    return ws


@contextmanager
def staging(root: Path) -> Iterator[Workspace]:
    """Build a new workspace in a hidden sibling folder and move it into place only if all went well."""
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise WorkspaceError(f"{root} already exists and is not empty")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        ws = Workspace(tmp)
        ws.models.mkdir()
        ws.checkpoints.mkdir()
        yield ws
        if root.exists():
            root.rmdir()
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def engine_lock(ws: Workspace) -> Iterator[None]:
    """One engine per workspace; the OS drops the lock if the engine dies, even by SIGKILL."""
    fh = open(ws.root / "engine.lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise WorkspaceError(f"workspace {ws.root} is already evolving in another process") from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# Keys that decide who oversees, what runs, and where secrets go: a hand edit of one of these is held (the
# engine stops) until an approver accepts it, since config.toml is writable by whoever can write the workspace.
# engine.ray_address: the workspace's texts and model versions go to that cluster.
GOVERNED_PREFIXES = ("gates.", "curate.sandbox", "serve.predict_requires_token", "engine.ray_address")
GOVERNED_LLM_KEYS = ("enabled", "base_url", "api_key_env")  # of any `.llm.` section: the key goes to base_url


def governed(key: str) -> bool:
    section, _, leaf = key.rpartition(".")
    return key.startswith(GOVERNED_PREFIXES) or (section.endswith("llm") and leaf in GOVERNED_LLM_KEYS)


def audit_config(ws: Workspace, actor: str, accept: frozenset[str] | None = None,
                 action: str = "config_changed") -> dict:
    """Record in the audit log how config.toml differs from the last version seen, hand edits included.

    accept: the keys whose change the caller vouches for (None: all, for init and code that builds a
    workspace). A governed key changed otherwise keeps its old value in the snapshot and is held: audited once
    as `config_change_held`, and the engine refuses to start (require_accepted_config) until an approver
    accepts it (actions.accept_config) or the edit is undone."""
    current = flatten(ws.config().model_dump())
    before = ws.store.config_snapshot()
    if before is None:
        ws.store.record_config(current, {"initial": True}, actor, action, {})
        return {"initial": True}
    changed = sorted(k for k in set(current) | set(before) if before.get(k) != current.get(k))
    # a key new to this Evolab (absent before) is its default, not an edit
    held = [k for k in changed if governed(k) and k in before and accept is not None and k not in accept]
    changes = {k: {"from": before.get(k), "to": current.get(k)} for k in changed if k not in held}
    snapshot = {**current, **{k: before[k] for k in held}}
    held_changes = {k: {"from": before[k], "to": current.get(k)} for k in held}
    if changes or held_changes != ws.store.config_held():  # a held edit is audited once, not at every start
        ws.store.record_config(snapshot, changes, actor, action, held_changes)
    return changes


def held_config(ws: Workspace) -> dict:
    """Governed keys whose value in config.toml no approver has accepted: {key: {"from": ..., "to": ...}}."""
    current, before = flatten(ws.config().model_dump()), ws.store.config_snapshot() or {}
    return {k: {"from": before[k], "to": current.get(k)} for k in sorted(before)
            if governed(k) and before[k] != current.get(k)}


def require_accepted_config(ws: Workspace, actor: str) -> None:
    """Record hand edits to config.toml, and refuse to run while a governed one waits for an approver."""
    audit_config(ws, actor, accept=frozenset())
    held = held_config(ws)
    if held:
        edits = "; ".join(f"{k} {v['from']!r} -> {v['to']!r}" for k, v in held.items())
        raise WorkspaceError(f"config.toml was edited by hand ({edits}): these keys govern oversight, execution "
                             f"or secrets, so nothing runs until an approver accepts the change with `python -m "
                             f"core config accept --workspace {ws.root} --by APPROVER` (or the edit is undone)")
