"""Counterfactual minimal pairs for a confused pair: swap the phrase that separates the two classes.

For a confusion A -> B, the distinctive terms of A and of B (class-based TF-IDF over the labeled
examples) are found; an example of A that contains A's term gets B's term instead and becomes a
candidate for B, and the other way round. The verifiers then decide whether the swap really moved it.
"""
from __future__ import annotations

import re

from core.curate.registry import Context, candidates, register
from core.diagnose.errors import distinctive_terms


def _swap(text: str, old: str, new: str) -> str | None:
    pattern = re.compile(rf"\b{re.escape(old)}\b", re.IGNORECASE)
    return pattern.sub(new, text, count=1) if pattern.search(text) else None


@register("counterfactual")
def counterfactual(ctx: Context):
    rows: list[dict] = []
    for true, pred, _ in ctx.pairs:
        a = ctx.seed[ctx.seed["label"] == true]
        b = ctx.seed[ctx.seed["label"] == pred]
        target = f"pair:{true}->{pred}"
        # the diagnosis' ask for this pair, capped; every swap of a distinctive term is one candidate
        budget = min(ctx.asks.get(target, ctx.cfg.counterfactual_per_pair), ctx.cfg.counterfactual_per_pair)
        if a.empty or b.empty or not budget:
            continue
        terms_a, terms_b = distinctive_terms([" ".join(a["text"]), " ".join(b["text"])], k=5)
        made = 0
        for src, dst_label, mine, theirs in ((a, pred, terms_a, terms_b), (b, true, terms_b, terms_a)):
            for ex_id, text in zip(src["id"], src["text"]):
                for old, new in zip(mine, theirs):
                    swapped = _swap(text, old, new)
                    if swapped and made < budget:
                        rows.append({"parent_id": int(ex_id), "text": swapped, "label": dst_label, "target": target})
                        made += 1
    if not ctx.pairs:
        ctx.notes["counterfactual"] = "no confused pairs diagnosed"
    return candidates("counterfactual", rows)
