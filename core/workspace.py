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

    def save_config(self, config: Config, actor: str = "cli") -> None:
        atomic.write_text(self.config_path, dump_config(config))
        if self.db.exists():
            audit_config(self, actor)


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


def audit_config(ws: Workspace, actor: str) -> dict:
    """Record in the audit log how config.toml differs from the last version seen, hand edits included."""
    current = flatten(ws.config().model_dump())
    before = ws.store.config_snapshot()
    if before == current:
        return {}
    changes = {k: {"from": (before or {}).get(k), "to": current.get(k)}
               for k in sorted(set(current) | set(before or {})) if (before or {}).get(k) != current.get(k)}
    if before is None:
        changes = {"initial": True}
    ws.store.record_config(current, changes, actor)
    return changes
