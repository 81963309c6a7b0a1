"""Files that are either whole or absent: written under a temporary name, fsynced, then renamed.

A rename is atomic, but without an fsync of the data first a crash can leave the new name pointing at
empty or short contents, and without an fsync of the folder the rename itself may not survive.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from core.faults import crash_point


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder under `folder` to disk (before it is renamed into place)."""
    for path in sorted(Path(folder).rglob("*"), reverse=True):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(folder)


TEMPORARY = re.compile(r"^\..+\.\d+\.tmp$")  # what _tmp_name and new_folder make


def sweep(folder: Path) -> list[Path]:
    """Remove the temporaries a killed writer left under `folder`; call it only where no writer runs now."""
    found = [p for p in Path(folder).rglob(".*.tmp") if TEMPORARY.match(p.name)] if Path(folder).exists() else []
    for path in found:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_with(path: Path | str, write: Callable[[Path], None]) -> None:
    """Let `write` fill a temporary file, then make it `path` atomically; on any error nothing changes."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        crash_point("before_rename")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes(path: Path | str, data: bytes) -> None:
    write_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: Path | str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path | str, value, **kwargs) -> None:
    write_text(path, json.dumps(value, **kwargs))


@contextmanager
def new_folder(dest: Path | str) -> Iterator[Path]:
    """A folder filled under a temporary name and renamed to `dest` only when the block succeeds.

    `dest` must not exist: a finished folder is never replaced (versions are written once)."""
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} already exists and is never overwritten")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        fsync_tree(tmp)
        crash_point("before_rename")
        os.rename(tmp, dest)  # rename, not replace: fails rather than clobber a folder that appeared meanwhile
        fsync_dir(dest.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
