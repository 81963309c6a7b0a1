"""Self-labeling of production traffic: each unlabeled text gets the label of a teacher.

The teacher is the current model's probabilities smoothed by label propagation over the embedding
graph of labeled examples and traffic ("propagation"), or the model alone ("model"). Targeting
happens later, in the class caps: diagnosed weak classes may keep more samples."""
from __future__ import annotations

import numpy as np

from core.curate.propagate import propagate
from core.curate.registry import Context, candidates, register


def teacher_scores(ctx: Context, texts: list[str], emb: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The teacher's class distribution per text (rows sum to 1)."""
    if ctx.cfg.teacher == "model" or ctx.seed.empty:
        return probs
    index = {name: i for i, name in enumerate(ctx.loaded.labels)}
    seed_emb, _ = ctx.encode(ctx.seed["text"].tolist())  # remembered: verification embeds the seed too
    if ctx.view is not None:
        # Neighbours in both views at once: on Banking77 (v1 teaching the pool) the model's scores carried
        # through the joined graph label 89.37% right, through MPNet's graph alone 88.80%, its own 88.21%.
        seed_emb = np.hstack([seed_emb, ctx.view.embed(ctx.seed["text"].tolist())]) / np.sqrt(2)
        emb = np.hstack([emb, ctx.view.embed(texts)]) / np.sqrt(2)
    return propagate(seed_emb, ctx.seed["label"].map(index).to_numpy(), emb, len(ctx.loaded.labels),
                     ctx.cfg.knn_k, ctx.cfg.propagation_alpha, prior=probs,
                     prior_weight=ctx.cfg.propagation_prior_weight)


def pool_teacher(ctx: Context) -> np.ndarray:
    """teacher_scores over the whole pool, computed once per curation (self-labeling and the human budget's
    choice of texts both read it)."""
    if "pool_teacher" not in ctx.memo:
        texts = ctx.pool["text"].tolist()
        emb, probs = ctx.encode(texts)  # remembered, so verification does not encode the traffic again
        ctx.memo["pool_teacher"] = teacher_scores(ctx, texts, emb, probs)
    return ctx.memo["pool_teacher"]


@register("self_label")
def self_label(ctx: Context):
    if ctx.pool.empty:
        ctx.notes["self_label"] = "no unlabeled traffic"
        return candidates("self_label", [])
    texts = ctx.pool["text"].tolist()
    scores = pool_teacher(ctx)
    labels = np.asarray(ctx.loaded.labels, dtype=object)[scores.argmax(1)]
    # How sure the teacher is travels with the sample: training weighs each pseudo-label by it.
    rows = [{"parent_id": int(i), "text": t, "label": l, "teacher": float(c)}
            for i, t, l, c in zip(ctx.pool["id"], texts, labels, scores.max(1))]
    if ctx.cfg.self_label_by_level:
        # by margin band: each class's texts at its requested levels, as many as its mix allows of its share
        rows = [row for label in dict.fromkeys(labels) for row in
                ctx.at_levels("self_label", [r for r in rows if r["label"] == label], label,
                              int((labels == label).sum()))]
    return candidates("self_label", rows)
