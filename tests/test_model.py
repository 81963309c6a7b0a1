"""Versions are written once with safetensors, hashed, and refused when altered or truncated."""
import numpy as np
import pytest

from core import model as M, registry
from core.cli import main


def test_version_folder_holds_only_safetensors_and_json(baseline_ws):
    version = baseline_ws.store.alias("production")
    files = baseline_ws.store.version(version)["files"]
    assert files and all(name.endswith((".safetensors", ".json", ".md")) for name in files)
    assert any(name.endswith("adapter_model.safetensors") for name in files)


def test_reload_gives_identical_predictions(baseline_ws):
    version = baseline_ws.store.alias("production")
    texts = baseline_ws.store.examples("heldout")["text"].tolist()
    a = M.predict_proba(registry.load(baseline_ws, version), texts)
    b = M.predict_proba(registry.load(baseline_ws, version), texts)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert np.allclose(a.sum(1), 1.0, atol=1e-4)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_adapter_is_refused(baseline_ws, tmp_path, capsys, damage):
    version = baseline_ws.store.alias("production")
    path = baseline_ws.models / version / "adapter" / "adapter_model.safetensors"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2] if damage == "truncate" else blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(M.ModelIntegrityError, match="altered or truncated"):
        registry.load(baseline_ws, version)
    src = tmp_path / "in.csv"
    src.write_text("text\nwhere is my parcel\n")
    code = main(["predict", "--workspace", str(baseline_ws.root), "--input", str(src), "--output",
                 str(tmp_path / "out.csv")])
    assert code == 1 and "altered or truncated" in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()


def test_lineage_is_recorded(baseline_ws):
    row = baseline_ws.store.version(baseline_ws.store.alias("production"))
    assert row["lineage"]["cycle"] == row["cycle_id"]
    assert row["lineage"]["rows_by_source"] == {"seed": len(baseline_ws.store.examples("seed"))}
    assert len(row["lineage"]["train_data_sha256"]) == 64


def test_evolve_on_damaged_production_fails_before_writing(baseline_ws, capsys):
    version = baseline_ws.store.alias("production")
    head = baseline_ws.models / version / "head.safetensors"
    head.write_bytes(head.read_bytes()[:100])
    before = len(baseline_ws.store.audit_entries())
    assert main(["evolve", "--workspace", str(baseline_ws.root), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "head.safetensors was altered or truncated" in err and len(err.splitlines()) == 1
    assert len(baseline_ws.store.cycles()) == 1 and len(baseline_ws.store.audit_entries()) == before


def test_a_version_embeds_in_the_precision_it_trained_in(baseline_ws, tmp_path):
    from core.config import ModelConfig

    loaded = registry.load(baseline_ws, baseline_ws.store.alias("production"))
    texts = baseline_ws.store.examples("heldout")["text"].tolist()
    for precision in ("fp32", "auto"):
        cfg = ModelConfig(max_length=loaded.max_length, head_scale=loaded.model.scale, precision=precision)
        files = M.save_version(loaded.model, loaded.labels, cfg, tmp_path / precision, None)
        assert M.load_version(tmp_path / precision, files, precision).bf16 is (precision == "auto")
    fp32 = M.embed_texts(loaded.tokenizer, loaded.model, texts, loaded.max_length)
    np.testing.assert_array_equal(fp32, M.embed_texts(loaded.tokenizer, loaded.model, texts, loaded.max_length,
                                                      bf16=False))
    bf16 = M.embed_texts(loaded.tokenizer, loaded.model, texts, loaded.max_length, bf16=True)
    assert (fp32 * bf16).sum(1).min() > 0.995  # the same vectors, at most rounded
