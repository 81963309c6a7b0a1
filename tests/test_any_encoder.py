"""Any Hugging Face encoder works as the base model: tiny random-weight BERT, DistilBERT, MPNet, RoBERTa and
DeBERTa-v2, built from configs with tokenizers trained here on the demo texts (nothing is downloaded), each go
through train -> diagnose -> predict."""
import json
import re

import pandas as pd
import pytest

from core import cycle, model as M, registry
from core.cli import main
from core.config import ConfigError, ModelConfig
from tests.conftest import DATA, LABELS, fast_config, make_workspace

# name: (the attention projections of one layer, heads, the layers LoRA is asked for: ids, or None for the top one)
ARCHS = {
    "bert": ({"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"},
             4, None),
    "distilbert": ({"attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin"}, 2, [0]),
    "mpnet": ({"attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o"}, 4, None),
    "roberta": ({"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"},
                2, [0]),
    "deberta-v2": ({"attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj",
                    "attention.output.dense"}, 4, None),
}
N_LAYERS = 2


@pytest.fixture(scope="session")
def encoders(tmp_path_factory) -> dict:
    """Each architecture saved with save_pretrained, with a tokenizer of its own kind: WordPiece (BERT,
    DistilBERT, MPNet), byte-level BPE (RoBERTa), Unigram (DeBERTa-v2)."""
    import torch
    import transformers as T
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    texts = pd.concat([pd.read_csv(DATA / f"tickets_{part}.csv")["text"]
                       for part in ("labeled", "heldout", "unlabeled")]).tolist()

    def trained(model, trainer, pre_tokenizer, normalizer=None) -> dict:
        tok = Tokenizer(model)
        tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
        tok.train_from_iterator(texts, trainer)
        return json.loads(tok.to_str())["model"]

    def wordpiece(specials: list[str]) -> dict:  # specials[1] is the unknown token
        return trained(models.WordPiece(unk_token=specials[1]),
                       trainers.WordPieceTrainer(vocab_size=600, special_tokens=specials),
                       pre_tokenizers.BertPreTokenizer(), normalizers.BertNormalizer(lowercase=True))["vocab"]

    bpe = trained(models.BPE(), trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                   special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]),
                  pre_tokenizers.ByteLevel(add_prefix_space=False))
    unigram = trained(models.Unigram(), trainers.UnigramTrainer(vocab_size=600, unk_token="[UNK]",
                                                                special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]",
                                                                                "[MASK]"]),
                      pre_tokenizers.Metaspace())
    bert_vocab = wordpiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    mpnet_vocab = wordpiece(["<s>", "[UNK]", "</s>", "<pad>", "<mask>"])

    def size(arch):
        return dict(hidden_size=32, num_hidden_layers=N_LAYERS, num_attention_heads=ARCHS[arch][1],
                    intermediate_size=64, max_position_embeddings=130)

    built = {
        "bert": (T.BertConfig(vocab_size=len(bert_vocab), **size("bert")), T.BertTokenizer(vocab=bert_vocab)),
        "distilbert": (T.DistilBertConfig(vocab_size=len(bert_vocab), dim=32, n_layers=N_LAYERS,
                                          n_heads=ARCHS["distilbert"][1], hidden_dim=64, max_position_embeddings=130),
                       T.DistilBertTokenizer(vocab=bert_vocab)),
        "mpnet": (T.MPNetConfig(vocab_size=len(mpnet_vocab), **size("mpnet")), T.MPNetTokenizer(vocab=mpnet_vocab)),
        "roberta": (T.RobertaConfig(vocab_size=len(bpe["vocab"]), pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                    **size("roberta")),
                    T.RobertaTokenizer(vocab=bpe["vocab"], merges=[tuple(m) for m in bpe["merges"]])),
        "deberta-v2": (T.DebertaV2Config(vocab_size=len(unigram["vocab"]), relative_attention=True,
                                         pos_att_type=["c2p", "p2c"], position_buckets=16, **size("deberta-v2")),
                       T.DebertaV2Tokenizer(vocab=[tuple(p) for p in unigram["vocab"]])),
    }
    root = tmp_path_factory.mktemp("encoders")
    for arch, (config, tokenizer) in built.items():
        torch.manual_seed(0)
        T.AutoModel.from_config(config).save_pretrained(root / arch)
        tokenizer.save_pretrained(root / arch)
    return {arch: root / arch for arch in built}


@pytest.fixture(scope="session")
def csvs(tmp_path_factory) -> dict:
    """Four classes with all their demo rows: enough held-out rows that a tiny model gets some right and some
    wrong, which the activation statistics need."""
    out = tmp_path_factory.mktemp("csvs")
    paths = {"labeled": out / "labeled.csv", "heldout": out / "heldout.csv", "unlabeled": out / "unlabeled.csv"}
    for part, path in paths.items():
        frame = pd.read_csv(DATA / f"tickets_{part}.csv")
        (frame[frame["label"].isin(LABELS)] if "label" in frame else frame.head(40)).to_csv(path, index=False)
    return paths


def _adapted(loaded: M.Loaded, arch: str) -> dict[int, set[str]]:
    """Layer index -> names (inside the layer) of the modules carrying a LoRA adapter."""
    prefix = "transformer.layer" if arch == "distilbert" else "encoder.layer"
    found: dict[int, set[str]] = {}
    for name, module in loaded.model.encoder.get_base_model().named_modules():
        match = re.fullmatch(rf"{re.escape(prefix)}\.(\d+)\.(.+)", name)
        if hasattr(module, "lora_A") and match:
            found.setdefault(int(match[1]), set()).add(match[2])
    assert sum(map(len, found.values())) == sum(hasattr(m, "lora_A") for m in loaded.model.encoder.modules())
    return found


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ARCHS))
def test_train_diagnose_predict(arch, encoders, csvs, tmp_path, capsys):
    attention, n_heads, layer_ids = ARCHS[arch]
    config = fast_config()
    config.model.base_model = str(encoders[arch])
    config.model.lora_layer_ids = layer_ids or []
    config.diagnose.correct_attributions = 5
    ws = make_workspace(tmp_path / "ws", csvs, config)
    assert cycle.run_cycle(ws, cycle.start_cycle(ws), progress=False).status == "done"
    version = ws.store.alias("production")

    # LoRA sits on this architecture's attention projections, in the requested layers only
    adapted = _adapted(registry.load(ws, version), arch)
    assert set(adapted) == set(layer_ids or [N_LAYERS - 1])
    for names in adapted.values():
        assert attention <= names

    # the diagnosis finds the model's layers and heads and never ranks a special token
    assert main(["diagnose", "--workspace", str(ws.root), "--run", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    internals = ws.store.diagnosis_internals(0)
    assert len(internals["activations"]) == N_LAYERS
    importance = internals["heads"]["importance"]
    assert len(importance) == N_LAYERS and all(len(row) == n_heads for row in importance)
    tokenizer = registry.load(ws, version).tokenizer
    added = {tokenizer.cls_token, tokenizer.sep_token, tokenizer.bos_token, tokenizer.eos_token,
             tokenizer.pad_token} - {None}
    attributions = ws.store.attributions(0)
    assert len(attributions) and attributions["baseline"].str.startswith(f"{tokenizer.pad_token} at every").all()
    for tokens in attributions["tokens"]:
        assert json.loads(tokens) and not added & set(json.loads(tokens))
    top = [t for f in report["findings"] for row in f["detail"].get("top_tokens", []) for t in row]
    assert not set(tokenizer.all_special_tokens) & set(top)

    # predictions come back with labels
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    pd.DataFrame({"text": ["my card was declined twice", "where is my parcel"]}).to_csv(src, index=False)
    assert main(["predict", "--workspace", str(ws.root), "--input", str(src), "--output", str(out)]) == 0
    assert set(pd.read_csv(out)["prediction"]) <= set(ws.store.labels())


def test_target_modules_that_match_nothing_are_refused_before_training(encoders, tiny_csvs, tmp_path):
    """BERT's names on MPNet would give it no attention adapters: refused at init, at engine start and at build."""
    refused = r"model.target_modules \['query', 'value'\] match no Linear module .*'attention.attn.q'"
    config = fast_config()
    config.model.base_model = str(encoders["mpnet"])
    config.model.target_modules = ["query", "value"]
    with pytest.raises(ConfigError, match=refused):
        make_workspace(tmp_path / "refused", tiny_csvs, config)
    assert not (tmp_path / "refused").exists()

    config.model.target_modules = []
    ws = make_workspace(tmp_path / "ws", tiny_csvs, config)
    edited = ws.config()
    edited.model.target_modules = ["query", "value"]  # a hand edit of config.toml
    ws.save_config(edited)
    with pytest.raises(ConfigError, match=refused):
        cycle.evolve(ws, cycles=1, progress=False)
    assert len(ws.store.cycles()) == 0

    with pytest.raises(ConfigError, match=refused):
        M.build(ModelConfig(base_model=str(encoders["mpnet"]), target_modules=["query", "value"]), 2)
    # the names of the model's own parts are taken
    M.check_lora_layers(ModelConfig(base_model=str(encoders["mpnet"]), target_modules=["q", "v"]))
