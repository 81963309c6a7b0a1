"""Counterfactual minimal pairs for a confused pair: vary the words the model leans on in its errors.

For a confusion A -> B whose errors Captum attributed (diagnose.leaned_on), the words the model leaned on
toward B are what vary: an example of B loses such a word and stays B, an example of A gains it and stays A
(a word the model leans on wrongly decides nothing alone). Without attributions, the distinctive terms of A and
of B (class-based TF-IDF over the labeled examples) are swapped: an example of A that contains A's term gets B's
term instead and becomes a candidate for B, and the other way round. Of the variants, each label's share of the
pair's budget is kept at its requested difficulty levels, as far as the change moved the text for the model; the
verifiers then decide whether the change really moved it.
"""
from __future__ import annotations

import re
from itertools import zip_longest

from core.curate.registry import Context, candidates, register, split_counts
from core.diagnose.errors import distinctive_terms


def _swap(text: str, old: str, new: str) -> str | None:
    pattern = re.compile(rf"\b{re.escape(old)}\b", re.IGNORECASE)
    return pattern.sub(new, text, count=1) if pattern.search(text) else None


def _without(text: str, words: list[str]) -> str | None:
    """text with each of words taken out once; None unless every one was there (and something is left)."""
    for word in words:
        pattern = re.compile(rf"\s*\b{re.escape(word)}\b", re.IGNORECASE)
        cut = pattern.sub("", text, count=1).strip()
        if not cut or cut == text.strip():
            return None
        text = cut
    return text


def _vary(a, b, true: str, pred: str, leaned: list[str], target: str) -> list[dict]:
    """Minimal pairs around the words the model leaned on toward B in its A -> B errors: B's examples lose the
    word and stay B, A's examples gain it and stay A (the word alone decides nothing); alternately. Then, moving
    the text further, each example loses or gains the first two, three, ... of those words at once."""
    def varied(words: list[str]) -> list[dict]:
        removed = [{"parent_id": int(i), "text": cut, "label": pred, "target": target}
                   for i, text in zip(b["id"], b["text"]) if (cut := _without(text, words))]
        added = [{"parent_id": int(i), "text": f"{text.rstrip()} {' '.join(words)}", "label": true, "target": target}
                 for i, text in zip(a["id"], a["text"]) if all(_without(text, [w]) is None for w in words)]
        return [row for pair in zip_longest(removed, added) for row in pair if row is not None]

    return [row for words in [[w] for w in leaned] + [leaned[:k] for k in range(2, len(leaned) + 1)]
            for row in varied(words)]


def _within(ctx: Context, made: list[dict], budget: int) -> list[dict]:
    """Up to budget of a pair's variants, each label's share of it at that label's requested difficulty levels
    (how far a variant moved the text, as the model measures it, decides its level)."""
    if not ctx.cfg.difficulty_control:
        return made[:budget]
    labels = list(dict.fromkeys(r["label"] for r in made))
    shares = split_counts(min(budget, len(made)), [sum(r["label"] == lab for r in made) / len(made) for lab in labels]) \
        if made else []
    return [row for lab, share in zip(labels, shares)
            for row in ctx.at_levels("counterfactual", [r for r in made if r["label"] == lab], lab, share)]


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
            made = _vary(a, b, true, pred, leaned, target)
            varied.append(f"{true}->{pred}: varied {', '.join(leaned)}")
        else:
            terms_a, terms_b = distinctive_terms([" ".join(a["text"]), " ".join(b["text"])], k=5)
            made = [{"parent_id": int(ex_id), "text": swapped, "label": dst_label, "target": target}
                    for src, dst_label, mine, theirs in ((a, pred, terms_a, terms_b), (b, true, terms_b, terms_a))
                    for ex_id, text in zip(src["id"], src["text"])
                    for old, new in zip(mine, theirs) if (swapped := _swap(text, old, new))]
        rows += _within(ctx, made, budget)
    if not ctx.pairs:
        ctx.notes["counterfactual"] = "no confused pairs diagnosed"
    elif varied:
        ctx.notes["counterfactual"] = "; ".join(varied) + " (the words attributed in its errors)"
    return candidates("counterfactual", rows)
