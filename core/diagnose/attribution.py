"""Token attributions with Captum's Layer Integrated Gradients over the embedding layer.

Each attribution is stored with its target, its baseline and the convergence delta, so a reader can
judge how far to trust it (Captum's own advice).
"""
from __future__ import annotations

from collections.abc import Collection

import numpy as np
import pandas as pd
import torch
from captum.attr import LayerIntegratedGradients

from core import model as M


def baseline_text(tok) -> str:
    """The baseline in the tokenizer's own tokens, e.g. "[PAD] at every position but [CLS] and [SEP]" (BERT) or
    "<pad> at every position but <s> and </s>" (RoBERTa)."""
    enc = tok("x", return_special_tokens_mask=True)
    added = dict.fromkeys(t for t, s in zip(tok.convert_ids_to_tokens(enc["input_ids"]), enc["special_tokens_mask"])
                          if s)
    return f"{tok.pad_token} at every position" + (" but " + " and ".join(added) if added else "")


def _embedding_layer(model: M.TextClassifier) -> torch.nn.Module:
    return model.encoder.get_input_embeddings()


def attribute(loaded: M.Loaded, texts: list[str], targets: list[int], n_steps: int = 16,
              batch_size: int = 16) -> list[dict]:
    """One record per text: tokens, per-token scores (L2-normalised), target index and delta."""
    model = loaded.model.to(M.device()).eval()
    tok = loaded.tokenizer
    dev = M.device()

    def forward(input_ids, attention_mask):
        return model(input_ids, attention_mask)

    lig = LayerIntegratedGradients(forward, _embedding_layer(model))
    described = baseline_text(tok)
    order = np.argsort([len(t) for t in texts])
    out: list[dict | None] = [None] * len(texts)
    for start in range(0, len(texts), batch_size):
        idx = order[start:start + batch_size]
        enc = M.tokenize(tok, [texts[i] for i in idx], loaded.max_length, return_special_tokens_mask=True)
        ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
        # The tokens the tokenizer added around each text ([CLS]/[SEP], <s>/</s>...) stay in the baseline; the
        # mask says which they are, whatever the tokenizer calls them (a "[SEP]" typed in a text is the text's).
        added = enc["special_tokens_mask"].to(dev).bool() & mask.bool()
        baseline = torch.where(added, ids, torch.full_like(ids, tok.pad_token_id))
        target = torch.as_tensor([targets[i] for i in idx], device=dev)
        attrs, delta = lig.attribute(ids, baselines=baseline, additional_forward_args=(mask,), target=target,
                                     n_steps=n_steps, return_convergence_delta=True)
        scores = attrs.sum(-1).detach()
        scores = scores / scores.norm(dim=-1, keepdim=True).clamp(min=1e-9)
        for row, i in enumerate(idx):
            # The text's own tokens only: where input and baseline agree the attribution is zero by construction.
            own = (mask[row].bool() & ~added[row]).cpu()
            tokens = tok.convert_ids_to_tokens(ids[row].cpu()[own].tolist())
            out[i] = {"tokens": tokens, "scores": [round(float(v), 5) for v in scores[row].cpu()[own]],
                      "target": int(targets[i]), "delta": float(delta[row]), "baseline": described}
    return out  # type: ignore[return-value]


def attribution_rows(loaded: M.Loaded, results: pd.DataFrame, max_errors: int, n_correct: int,
                     seed: int = 0, n_steps: int = 16) -> pd.DataFrame:
    """Every misclassified example up to a cap, and a sample of correct ones, attributed to the prediction."""
    wrong = results[~results["correct"].astype(bool)].head(max_errors)
    right = results[results["correct"].astype(bool)]
    right = right.sample(n=min(n_correct, len(right)), random_state=seed) if len(right) else right
    chosen = pd.concat([wrong, right], ignore_index=True)
    if chosen.empty:
        return pd.DataFrame(columns=["example_id", "label", "predicted", "correct", "target", "tokens", "scores",
                                     "baseline", "delta"])
    index = {name: i for i, name in enumerate(loaded.labels)}
    records = attribute(loaded, chosen["text"].tolist(), [index[p] for p in chosen["predicted"]], n_steps=n_steps)
    import json

    return pd.DataFrame({
        "example_id": chosen["example_id"].to_numpy(), "label": chosen["label"].to_numpy(),
        "predicted": chosen["predicted"].to_numpy(), "correct": chosen["correct"].astype(bool).to_numpy(),
        "target": chosen["predicted"].to_numpy(),
        "tokens": [json.dumps(r["tokens"]) for r in records], "scores": [json.dumps(r["scores"]) for r in records],
        "baseline": [r["baseline"] for r in records], "delta": [r["delta"] for r in records]})


def top_tokens(tokens: list[str], scores: list[float], k: int = 3, special: Collection[str] = ()) -> list[str]:
    """The k tokens that pushed hardest toward the target; special: the tokenizer's special tokens (an [UNK] or a
    "[SEP]" typed in a text), which never rank."""
    ranked = [t for _, t in sorted(zip(scores, tokens), reverse=True) if t not in special]
    return ranked[:k]
