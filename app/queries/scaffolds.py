"""The scaffolds page: production scaffold, archive with lineage and search scores, trials."""
from __future__ import annotations

from app.queries.shared import _cached, _store


@_cached
def scaffold_overview(ws: str) -> dict:
    """Production scaffold, archive with lineage and search scores, trials with their A/B results."""
    from core.scaffolds.report import overview

    return overview(_store(ws))
