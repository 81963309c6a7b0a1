"""A version's memory: the rows it trained on, embedded once, voting in its predictions."""
import numpy as np
import pytest

from core import model as M, registry
from core.config import ModelConfig
from core.scaffolds.run import bank_for


def _production(ws):
    version = ws.store.alias("production")
    return version, registry.load(ws, version)


def test_a_version_keeps_what_it_trained_on_and_does_not_encode_it_again(baseline_ws):
    version, loaded = _production(baseline_ws)
    assert "memory.safetensors" in baseline_ws.store.version(version)["files"]
    seed = baseline_ws.store.examples("seed")
    assert loaded.memory is not None and len(loaded.memory.emb) == seed["text"].nunique()
    # The stored labels are the seed's: row order follows the training file, so look each text up.
    rows = loaded.memory.rows_of(seed["text"].tolist())
    assert (rows >= 0).all()
    assert [loaded.labels[i] for i in loaded.memory.label_idx[rows]] == seed["label"].tolist()
    # A text the version trained on gets the stored (half-precision) embedding, not a second encoder pass.
    texts = seed["text"].tolist()[:5]
    emb, _ = M.embed_and_proba(loaded, texts)
    fresh = M.embed_texts(loaded.tokenizer, loaded.model, texts, loaded.max_length)
    np.testing.assert_array_equal(emb, loaded.memory.emb[rows[:5]])
    assert 0 < np.abs(emb - fresh).max() < 1e-2
    assert M.embed_and_proba(loaded, ["a text it never saw"])[0].any()


def test_the_memory_vote_is_blended_into_predictions(baseline_ws):
    _, loaded = _production(baseline_ws)
    texts = baseline_ws.store.examples("heldout")["text"].tolist()
    emb, blended = M.embed_and_proba(loaded, texts)
    memory = loaded.memory
    loaded.memory = None
    head = M.predict_proba(loaded, texts)
    vote = memory.vote(emb, len(loaded.labels))
    np.testing.assert_allclose(blended, (1 - memory.blend) * head + memory.blend * vote, atol=1e-5)
    assert not np.allclose(blended, head, atol=1e-3)
    np.testing.assert_allclose(vote.sum(1), 1.0, atol=1e-5)

    # Rows planted right on these texts with one label carry them to it, in proportion to their trust.
    target = (head.argmax(1) + 1) % len(loaded.labels)
    planted = M.Memory(emb.copy(), target, np.ones(len(emb), np.float32), memory.keys[:0], k=1, blend=1.0)
    loaded.memory = planted
    assert (M.predict_proba(loaded, texts).argmax(1) == target).all()
    planted.weight[:], planted.blend = 0, 0.5  # rows nobody trusts cannot vote: a uniform vote changes no ranking
    assert (M.predict_proba(loaded, texts).argmax(1) == head.argmax(1)).all()


def test_a_version_saved_without_memory_predicts_with_its_head(baseline_ws, tmp_path):
    _, loaded = _production(baseline_ws)
    cfg = ModelConfig(max_length=loaded.max_length, head_scale=loaded.model.scale, memory_weight=0)
    files = M.save_version(loaded.model, loaded.labels, cfg, tmp_path / "v", None)
    assert "memory.safetensors" not in files
    again = M.load_version(tmp_path / "v", files, "v")
    assert again.memory is None
    texts = baseline_ws.store.examples("heldout")["text"].tolist()
    loaded.memory = None
    np.testing.assert_allclose(M.predict_proba(again, texts), M.predict_proba(loaded, texts), atol=1e-5)


def test_an_altered_memory_is_refused(baseline_ws):
    version, _ = _production(baseline_ws)
    path = baseline_ws.models / version / "memory.safetensors"
    blob = path.read_bytes()
    path.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(M.ModelIntegrityError, match="memory.safetensors was altered"):
        registry.load(baseline_ws, version)


def test_retrieval_votes_with_the_memory_and_seed_labeled_since(baseline_ws):
    _, loaded = _production(baseline_ws)
    bank = bank_for(baseline_ws, loaded)
    assert len(bank.emb) == len(loaded.memory.emb)  # nothing labeled since training
    np.testing.assert_array_equal(bank.label_idx, loaded.memory.label_idx)


def test_a_trained_text_is_not_told_its_own_label_back(baseline_ws):
    """The next cycle's teacher reads the production model's probabilities of the pool it trained on: its
    own rows are left out of their votes, or the memory would only repeat the last teacher."""
    _, loaded = _production(baseline_ws)
    texts = baseline_ws.store.examples("heldout")["text"].tolist()[:6]
    emb, _ = M.embed_and_proba(loaded, texts)
    keys = np.frombuffer(b"".join(M.text_key(t) for t in texts), dtype=np.uint8).reshape(len(texts), 16)
    own_label = np.arange(len(texts)) % len(loaded.labels)
    loaded.memory = M.Memory(emb.copy(), own_label, np.ones(len(texts), np.float32), keys.copy(), k=1, blend=1.0)
    predicted = M.predict_proba(loaded, texts).argmax(1)
    others = emb @ emb.T
    np.fill_diagonal(others, -np.inf)
    np.testing.assert_array_equal(predicted, own_label[others.argmax(1)])
    assert (predicted != own_label).any()
