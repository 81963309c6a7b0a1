"""Verified data accumulates: what earlier cycles kept, and people did not reject, trains every later candidate.

The store reads the eligible rows (`Store.replayable_samples`: kept or approved in an earlier cycle whose data
review let them train, people's latest decision applied); this module chooses which of them a training replays.
"""
from __future__ import annotations

import pandas as pd

from core.curate import filters


def select(earlier: pd.DataFrame, known_texts, protected: pd.DataFrame, per_class: int,
           similarity: float) -> pd.DataFrame:
    """The earlier samples to replay, oldest first, with their columns as read (id, cycle_id, generator, text,
    label, status, scores).

    known_texts: what the training already holds (the seed, people's labels, this cycle's kept samples): their
    label stands, so a text trains once. A text this cycle's curation dropped is still replayed: what an earlier
    cycle verified stays verified unless a person rejects it (a cap that bound this cycle is no verdict on it).
    protected: held-out and traffic-probe texts (`filters.protected`), checked again in case the probe grew since
    the sample was kept. At most per_class rows per class, the newest cycles' first (within one, what a person
    approved first), so older cycles cannot swamp the seed."""
    if earlier.empty:
        return earlier
    # Newest cycle first; within a cycle what a person approved, then in the order curation kept it.
    rows = earlier.assign(_norm=earlier["text"].map(filters.normalize), _person=earlier["status"].eq("approved"))
    rows = rows.sort_values(["cycle_id", "_person", "id"], ascending=[False, False, True]).drop_duplicates("_norm")
    rows = rows[~rows["_norm"].isin({filters.normalize(t) for t in known_texts})]
    rows = rows[~filters.near_protected(rows["text"].tolist(), protected, similarity)]
    rows = rows.groupby("label", sort=False).head(per_class)
    return rows.drop(columns=["_norm", "_person"]).sort_values(["cycle_id", "id"]).reset_index(drop=True)
