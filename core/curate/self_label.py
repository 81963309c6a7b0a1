"""Self-labeling of production traffic: the model's own label for each unlabeled text.

Targeting happens later, in the class caps: diagnosed weak classes may keep more samples."""
from __future__ import annotations

import numpy as np

from core import model as M
from core.curate.registry import Context, candidates, register


@register("self_label")
def self_label(ctx: Context):
    if ctx.pool.empty:
        ctx.notes["self_label"] = "no unlabeled traffic"
        return candidates("self_label", [])
    probs = M.predict_proba(ctx.loaded, ctx.pool["text"].tolist())
    labels = np.asarray(ctx.loaded.labels, dtype=object)[probs.argmax(1)]
    return candidates("self_label", [{"parent_id": int(i), "text": t, "label": l}
                                     for i, t, l in zip(ctx.pool["id"], ctx.pool["text"], labels)])
