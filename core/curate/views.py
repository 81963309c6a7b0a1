"""A second, frozen view of the texts: a teacher encoder's embeddings, computed once per text and cached.

Label propagation and the kNN verifier over the model's own embeddings are the model checking itself. A
frozen encoder (`curate.teacher_encoder`: a local folder, a Hugging Face folder already on disk, or a known
offline extra such as `all-mpnet-base-v2`) gives a view the training never moves: its graph carries the
model's scores as a teacher, and its neighbours vote as an independent verifier. The model that serves
stays the configured base model. Embeddings are cached in the workspace under `cache/views/<key>.npz`, the
key being the sha256 of the encoder's files, so a changed encoder never reuses another's vectors.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core import atomic, model as M
from core.checksums import encoder_key  # noqa: F401 (callers name it views.encoder_key)
from core.config import ConfigError


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class FrozenView:
    name: str
    folder: Path
    key: str
    cache: Path
    max_length: int = 128
    executor: object = None  # core.executor's: where texts new to the cache are encoded (None: here, in one call)
    _vectors: dict = field(default_factory=dict)
    _loaded: tuple | None = None
    _task: object = None  # the executor's task, kept so its encoder loads once (per actor, on Ray)

    def _read_cache(self) -> None:
        if self._vectors or not self.cache.exists():
            return
        with np.load(self.cache, allow_pickle=False) as saved:
            self._vectors = dict(zip(saved["keys"].tolist(), saved["vectors"]))

    def _write_cache(self) -> None:
        keys = np.asarray(list(self._vectors), dtype="U64")
        vectors = np.stack(list(self._vectors.values())).astype(np.float32)
        buffer = io.BytesIO()
        np.savez(buffer, keys=keys, vectors=vectors)
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(self.cache, buffer.getvalue())

    def embed(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """Normalized embeddings of texts; only texts this encoder has never seen are encoded."""
        self._read_cache()
        keys = [_text_key(t) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._vectors))
        if missing:
            by_key = dict(zip(keys, texts))
            if self.executor is not None:
                from core import executor

                self._task = self._task or executor.EncoderEmbed(self.name, self.max_length, self.key)
                fresh = executor.map_texts(self.executor, self._task, [by_key[k] for k in missing], progress,
                                           "encoding texts with the teacher view")
            else:
                if self._loaded is None:
                    self._loaded = M.load_base(str(self.folder))
                fresh = M.embed_texts(*self._loaded, [by_key[k] for k in missing], self.max_length,
                                      progress=progress, bf16=True)
            self._vectors.update(zip(missing, fresh))
            self._write_cache()
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._vectors[k] for k in keys])


def for_config(name: str, root: Path, executor=None) -> FrozenView | None:
    """The workspace's teacher view, or None when curate.teacher_encoder is empty; executor: where it encodes."""
    if not name:
        return None
    folder = Path(M.resolve_base(name))
    if not folder.is_dir():
        raise ConfigError(f"curate.teacher_encoder '{name}' is not a folder on this machine or a known offline "
                          "encoder (nothing is downloaded at run time)")
    key = encoder_key(folder)
    return FrozenView(name, folder, key, Path(root) / "cache" / "views" / f"{key}.npz", executor=executor)
