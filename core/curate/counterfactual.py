"""Counterfactual minimal pairs for a confused pair: vary the words the model leans on in its errors.

For a confusion A -> B whose errors Captum attributed (diagnose.leaned_on), the words the model leaned on
toward B are what vary: an example of B loses such a word and stays B, an example of A gains it and stays A
(a word the model leans on wrongly decides nothing alone). Without attributions, the distinctive terms of A and of B (class-based TF-IDF over the labeled
examples) are swapped: an example of A that contains A's term gets B's term instead and becomes a candidate
for B, and the other way round. The verifiers then decide whether the change really moved it.
"""
from __future__ import annotations

import re
from itertools import zip_longest

from core.curate.registry import Context, candidates, register
from core.diagnose.errors import distinctive_terms


def _swap(text: str, old: str, new: str) -> str | None:
    pattern = re.compile(rf"\b{re.escape(old)}\b", re.IGNORECASE)
    return pattern.sub(new, text, count=1) if pattern.search(text) else None


def _vary(a, b, true: str, pred: str, leaned: list[str], budget: int, target: str) -> list[dict]:
    """Minimal pairs around the words the model leaned on toward B in its A -> B errors: B's examples lose the
    word and stay B, A's examples gain it and stay A (the word alone decides nothing); alternately, up to budget."""
    def without(text: str, word: str) -> str | None:
        pattern = re.compile(rf"\s*\b{re.escape(word)}\b", re.IGNORECASE)
        cut = pattern.sub("", text, count=1).strip()
        return cut if cut and cut != text.strip() else None

    removed = [{"parent_id": int(i), "text": cut, "label": pred, "target": target}
               for word in leaned for i, text in zip(b["id"], b["text"]) if (cut := without(text, word))]
    added = [{"parent_id": int(i), "text": f"{text.rstrip()} {word}", "label": true, "target": target}
             for word in leaned for i, text in zip(a["id"], a["text"]) if without(text, word) is None]
    mixed = [row for pair in zip_longest(removed, added) for row in pair if row is not None]
    return mixed[:budget]


@register("counterfactual")
def counterfactual(ctx: Context):
    rows: list[dict] = []
    varied: list[str] = []  # per attributed pair, the words it varied
    for true, pred, _ in ctx.pairs:
        a = ctx.seed[ctx.seed["label"] == true]
        b = ctx.seed[ctx.seed["label"] == pred]
        target = f"pair:{true}->{pred}"
        # the diagnosis' ask for this pair, capped; every swap of a distinctive term is one candidate
        budget = min(ctx.asks.get(target, ctx.cfg.counterfactual_per_pair), ctx.cfg.counterfactual_per_pair)
        if a.empty or b.empty or not budget:
            continue
        leaned = ctx.leaned_on.get(f"{true}->{pred}", [])
        if leaned:
            rows += _vary(a, b, true, pred, leaned, budget, target)
            varied.append(f"{true}->{pred}: varied {', '.join(leaned)}")
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
    elif varied:
        ctx.notes["counterfactual"] = "; ".join(varied) + " (the words attributed in its errors)"
    return candidates("counterfactual", rows)
