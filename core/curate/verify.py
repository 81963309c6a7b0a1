"""Self-verified distillation: independent verifiers must agree with a sample's label.

- model: the current model's probability for the label;
- knn: the nearest-neighbour vote of the labeled examples for that label, carried through a k-nearest
  neighbour graph of labeled and candidate embeddings (label propagation, labels only: independent of
  the model's scores);
- consistency: the share of perturbed views of the text (a word dropped, two words swapped, a typo)
  that the model still assigns to the label.
"""
from __future__ import annotations

import random

import numpy as np
import pandas as pd

from core import model as M
from core.curate.propagate import propagate

VERIFIERS = ("model", "knn", "consistency")


def perturb(text: str, rng: random.Random) -> str:
    words = text.split()
    kind = rng.randrange(3)
    if kind == 0 and len(words) > 3:
        del words[rng.randrange(len(words))]
    elif kind == 1 and len(words) > 2:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    else:
        i = rng.randrange(len(words))
        w = words[i]
        if len(w) > 3:
            j = rng.randrange(1, len(w) - 1)
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    return " ".join(words)


def difficulty_level(margin: np.ndarray) -> np.ndarray:
    """0 easy .. 3 hard, from the model's top-1 minus top-2 probability."""
    return 3 - np.digitize(margin, [0.25, 0.5, 0.75])


def nearest(emb: np.ndarray, labeled_emb: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """Indices of the k most similar labeled embeddings per row (unordered; embeddings are normalized)."""
    kk = min(k, len(labeled_emb))
    out = np.zeros((len(emb), kk), dtype=np.int64)
    for start in range(0, len(emb), chunk):  # chunks bound the similarity matrix's memory
        sims = emb[start:start + chunk] @ labeled_emb.T
        out[start:start + chunk] = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
    return out


def knn_vote(emb: np.ndarray, labeled_emb: np.ndarray, labeled_idx: np.ndarray, num_labels: int, k: int) -> np.ndarray:
    """Per row, the share of its k nearest labeled embeddings with each label (rows x num_labels)."""
    nn = nearest(emb, labeled_emb, k)
    out = np.zeros((len(emb), num_labels))
    np.add.at(out, (np.repeat(np.arange(len(emb)), nn.shape[1]), labeled_idx[nn].ravel()), 1.0)
    return out / nn.shape[1]


def score(loaded: M.Loaded, texts: list[str], claimed: list[str], labeled_emb: np.ndarray,
          labeled_labels: np.ndarray, k: int, views: int, seed: int = 0, progress: bool = False,
          precomputed: tuple[np.ndarray, np.ndarray] | None = None,
          knn_emb: np.ndarray | None = None, checked: np.ndarray | None = None,
          encode=None) -> pd.DataFrame:
    """precomputed: the model's (embeddings, probabilities) for texts, when the caller already has them.
    knn_emb: the texts' embeddings in the view labeled_emb comes from, when that is not the model's own.
    checked: which texts need the consistency check (NaN for the rest; default all): each costs a forward pass
    per perturbed view, wasted on samples no verdict reads.
    encode: texts -> the model's (embeddings, probabilities) (Context.model_outputs, on the configured executor)."""
    encode = encode or (lambda texts: M.embed_and_proba(loaded, texts))
    index = {name: i for i, name in enumerate(loaded.labels)}
    target = np.asarray([index[c] for c in claimed])
    emb, probs = precomputed if precomputed is not None else M.embed_and_proba(loaded, texts, progress=progress)
    rows = np.arange(len(texts))
    model_score = probs[rows, target] if len(texts) else np.zeros(0)
    top2 = np.sort(probs, axis=1)[:, -2:] if len(texts) else np.zeros((0, 2))
    margin = top2[:, 1] - top2[:, 0] if len(texts) else np.zeros(0)
    knn, knn_top = np.zeros(len(texts)), np.zeros(len(texts))
    if len(labeled_emb) and len(texts):
        votes = propagate(labeled_emb, np.asarray([index[c] for c in labeled_labels]),
                          emb if knn_emb is None else knn_emb, len(loaded.labels), k)
        knn = votes[rows, target]
        # Whether the independent view ranks the label first: the data_review gate's label-noise estimate.
        knn_top = (votes.argmax(1) == target).astype(float)
    checked = np.ones(len(texts), dtype=bool) if checked is None else np.asarray(checked, dtype=bool)
    consistency = np.where(checked, 1.0, np.nan)
    if views and checked.any():
        rng = random.Random(seed)
        picked = [t for t, c in zip(texts, checked) if c]
        hits = np.zeros(len(picked))
        for _ in range(views):
            view = [perturb(t, rng) for t in picked]
            hits += encode(view)[1].argmax(1) == target[checked]
        consistency[checked] = hits / views
    return pd.DataFrame({"model": model_score.astype(float), "knn": knn, "knn_top": knn_top,
                         "consistency": consistency,
                         "margin": margin.astype(float), "predicted": np.asarray(loaded.labels, dtype=object)[
                             probs.argmax(1)] if len(texts) else [], "difficulty": difficulty_level(margin)})


# The bars for a class a rejected candidate stumbled on (core.lessons): every verifier must be sure.
STRICT_CONFIDENCE, STRICT_KNN = 0.9, 0.6


def verdict(scores: pd.Series, cfg, strict: bool = False, independent_only: bool = False) -> str | None:
    """None when every verifier clears its bar, else the reason the sample is dropped. strict: the
    held-back bars, and the kNN view must rank the label first. independent_only: a correction of the
    model, which the model's own verifiers cannot confirm; the kNN view must (and rank it first)."""
    min_conf = max(cfg.min_confidence, STRICT_CONFIDENCE) if strict else cfg.min_confidence
    min_knn = max(cfg.min_knn_agreement, STRICT_KNN) if strict else cfg.min_knn_agreement
    failed = []
    if independent_only:
        if scores["knn"] < min_knn:
            failed.append(f"knn {scores['knn']:.2f} < {min_knn}")
        if scores["knn_top"] < 1:
            failed.append("knn view ranks another label first")
        return ("the independent view does not confirm the correction: " + "; ".join(failed)) if failed else None
    if scores["model"] < min_conf:
        failed.append(f"model {scores['model']:.2f} < {min_conf} (predicts {scores['predicted']})")
    if scores["knn"] < min_knn:
        failed.append(f"knn {scores['knn']:.2f} < {min_knn}")
    if strict and scores["knn_top"] < 1:
        failed.append("knn view ranks another label first")
    if scores["consistency"] < cfg.min_consistency:
        failed.append(f"consistency {scores['consistency']:.2f} < {cfg.min_consistency}")
    if failed and strict:
        return "held back after a rejection, verifiers not sure: " + "; ".join(failed)
    return ("verifiers disagree: " + "; ".join(failed)) if failed else None
