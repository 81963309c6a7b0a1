"""The sha256 of a file and of every file in a folder: how model versions and offline encoders are checked
before they are loaded."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


_KEYS: dict[str, str] = {}


def encoder_key(folder: Path) -> str:
    """sha256 over the encoder's file names and contents (computed once per process and folder)."""
    folder = Path(folder).resolve()
    if str(folder) not in _KEYS:
        _KEYS[str(folder)] = hashlib.sha256(json.dumps(manifest(folder), sort_keys=True).encode()).hexdigest()
    return _KEYS[str(folder)]
