"""People's corrections of production predictions, as candidate samples like any other generator's.

A correction says the model was wrong, so the model's own verifiers (its probability for the label, its
answers on perturbed views) disagree by construction; a correction is therefore judged by the independent
view alone, the labeled examples' kNN vote, and by every filter (contamination, duplicates, a person's
earlier decision on the same text, which wins). Whoever sent it (the API token's name) stays its parent note.
"""
from __future__ import annotations

from core.curate.registry import Context, candidates, register

NAME = "feedback"


@register(NAME)
def feedback(ctx: Context):
    rows = ctx.feedback
    if rows is None or rows.empty:
        ctx.notes[NAME] = "no corrections from production yet"
        return candidates(NAME, [])
    latest = rows.drop_duplicates("text", keep="last")  # a later correction of the same text wins
    ctx.notes[NAME] = f"{len(latest):,} corrected texts from " + ", ".join(sorted(set(latest["actor"].astype(str))))
    return candidates(NAME, [{"parent_id": None, "text": t, "label": label}
                             for t, label in zip(latest["text"], latest["label"])])
