"""The human budget: which pool texts to ask a person to label (`curate.ask_humans_per_cycle`).

A label is worth a person's time where the views disagree about a text and the text stands for many others,
so each pool text is scored uncertainty x density (information density, Settles & Craven 2008):

- uncertainty, in [0, 1]: 1 - (top-1 minus top-2) of the two views' mean distribution, the model's own
  probabilities and the labeled examples' vote through the neighbour graph (labels only; in the frozen view
  when there is one). It is high where the views name different labels or both hesitate between two (query by
  committee's consensus margin); on the tiny test data the margin separates texts that mix two intents from
  clear ones where 1 - max did not;
- density, in [0, 1]: the mean cosine similarity to its k nearest pool neighbours, so a lone outlier
  (gibberish, an off-topic message) is not what a person is asked about.

When the diagnosis found error clusters, `curate.ask_near_clusters` of the budget goes first to the pool texts
nearest each cluster (core/diagnose: the clusters of the model's failures on the selection rows).

Texts already asked (pending, answered or skipped) are never asked again, and a near-duplicate of a text
chosen this cycle is passed over, so two requests do not cover the same ground. The embeddings and the
teacher's scores are the ones curation already computed (`Context.encode`, `self_label.pool_teacher`).
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from core.curate.propagate import neighbours, propagate
from core.curate.registry import Context
from core.curate.self_label import pool_teacher

COLUMNS = ["example_id", "text", "score", "uncertainty", "density", "suggestions"]
NEAR_DUPLICATE = 0.95  # cosine above which a text counts as the same request as one already chosen
SUGGESTIONS = 3  # the model's top labels shown with each request, one button each


def density(emb: np.ndarray, k: int) -> np.ndarray:
    """Mean cosine similarity of each row to its k most similar other rows (embeddings are normalized)."""
    if len(emb) < 2:
        return np.ones(len(emb))
    return np.clip(neighbours(emb, k)[1].mean(1), 0.0, 1.0)


def near_clusters(ctx: Context, emb: np.ndarray, n: int, allowed: np.ndarray) -> list[int]:
    """Up to n pool rows to ask about first: the texts nearest each error cluster's centroid (cosine, the model's
    embeddings), the clusters in turn, nearest first, among the allowed rows. A cluster is where the model errs together; a person's
    labels next to it teach what its members share."""
    if n <= 0 or not ctx.clusters:
        return []
    centroids = []
    for texts in ctx.clusters:
        if texts:
            c = ctx.encode(texts)[0].mean(0)
            centroids.append(c / max(float(np.linalg.norm(c)), 1e-9))
    if not centroids:
        return []
    ranked = np.argsort(-(emb @ np.stack(centroids).T), axis=0, kind="stable")  # (pool, clusters)
    out: list[int] = []
    for row in ranked:  # the nearest text of each cluster, then the second nearest of each, ...
        for i in row:
            if allowed[i] and int(i) not in out and len(out) < n:
                out.append(int(i))
    return out


def choose(ctx: Context, n: int, exclude: set[str] | frozenset = frozenset()) -> pd.DataFrame:
    """Up to n pool texts to ask a person about, best first: example_id, text, score, uncertainty, density and
    suggestions (JSON: the teacher's top labels with their probabilities)."""
    if n <= 0 or ctx.pool.empty or ctx.seed.empty:
        return pd.DataFrame(columns=COLUMNS)
    texts = ctx.pool["text"].tolist()
    emb, probs = ctx.encode(texts)
    teacher = pool_teacher(ctx)
    index = {name: i for i, name in enumerate(ctx.loaded.labels)}
    seed_texts, seed_y = ctx.seed["text"].tolist(), ctx.seed["label"].map(index).to_numpy()
    if ctx.view is not None:  # the independent vote comes from the frozen view, as in verification
        vote = propagate(ctx.view.embed(seed_texts), seed_y, ctx.view.embed(texts), len(index), ctx.cfg.knn_k)
    else:
        vote = propagate(ctx.encode(seed_texts)[0], seed_y, emb, len(index), ctx.cfg.knn_k)
    consensus = np.sort((probs + vote) / 2, axis=1)
    uncertainty = 1.0 - (consensus[:, -1] - (consensus[:, -2] if consensus.shape[1] > 1 else 0.0))
    dense = density(emb, ctx.cfg.knn_k)
    score = uncertainty * dense
    allowed = ~ctx.pool["text"].isin(exclude).to_numpy()
    chosen: list[int] = []
    near = near_clusters(ctx, emb, int(np.ceil(n * ctx.cfg.ask_near_clusters)), allowed)
    for i in [*near, *np.argsort(-score, kind="stable")]:
        if i in chosen:
            continue
        if len(chosen) >= n:
            break
        if not allowed[i] or (chosen and float((emb[chosen] @ emb[i]).max()) > NEAR_DUPLICATE):
            continue
        chosen.append(int(i))
    labels = np.asarray(ctx.loaded.labels, dtype=object)
    suggestions = [json.dumps([{"label": str(labels[j]), "p": round(float(teacher[i, j]), 4)}
                               for j in np.argsort(-teacher[i])[:SUGGESTIONS]]) for i in chosen]
    return pd.DataFrame({"example_id": ctx.pool["id"].to_numpy()[chosen].astype("int64"),
                         "text": [texts[i] for i in chosen], "score": score[chosen].astype(float),
                         "uncertainty": uncertainty[chosen].astype(float), "density": dense[chosen].astype(float),
                         "suggestions": suggestions}, columns=COLUMNS)
