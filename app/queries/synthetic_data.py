"""The synthetic data page: samples filtered and paged in DuckDB, their review and export, and label requests."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from app.queries.shared import _cached, _store, clear, workspace


@_cached
def is_sql(ws: str) -> bool:
    """The workspace's skill is SQL migrations (the sql-migrations preset): pages show its texts as code."""
    return "sql_migrations" in workspace(ws).config().curate.generators


def execution_evidence(scores: str | None) -> tuple[dict | None, dict]:
    """A sample's stored scores split into what execution found (None: not executed) and the rest."""
    parsed = json.loads(scores or "{}")
    return parsed.pop("sandbox", None), parsed


@_cached
def sample_facets(ws: str) -> dict[str, list]:
    return _store(ws).sample_facets()


@_cached
def sample_page(ws: str, cycle_id: int | None = None, generator: str | None = None, status: str | None = None,
                label: str | None = None, search: str = "", difficulty: int | None = None,
                min_confidence: float | None = None, page: int = 1, page_size: int = 50
                ) -> tuple[pd.DataFrame, int, int]:
    """Filtered and paged in DuckDB by the store: (rows, total matching, page actually shown)."""
    return _store(ws).sample_page(page, page_size, cycle_id=cycle_id, generator=generator, status=status,
                                  label=label, search=search, difficulty=difficulty, min_confidence=min_confidence)


def review_samples(ws: str, who, ids: list[int] | None, filters: dict, action: str, label: str | None,
                   comment: str = "") -> int:
    """Approve, reject or relabel samples as the signed-in approver; ids=None means every sample the filters
    match."""
    from core import actions

    done = actions.review_samples(workspace(ws), who, ids, action, label, comment, filters)
    clear()
    return done


def export_bytes(ws: str, who, filters: dict, fmt: str) -> bytes:
    """The kept samples matching the filters as a file, for an approver (exports leave with the data)."""
    import tempfile

    from core import actions

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"samples.{fmt}"
        actions.export_samples(workspace(ws), who, out, filters, destination=f"dashboard download (.{fmt})")
        return out.read_bytes()


# -- texts curation asked people to label ----------------------------------------------------------------------
@_cached
def label_queue(ws: str) -> pd.DataFrame:
    """The texts curation asked people to label and nobody has answered yet, with their suggestions unpacked."""
    queue = _store(ws).label_requests(status="pending")
    return queue.assign(suggestions=[json.loads(s or "[]") for s in queue["suggestions"]])


def answer_label_request(ws: str, who, request_id: int, label: str | None = None, skip: bool = False) -> dict:
    """A label (or a skip) for one requested text, as the signed-in labeler or approver."""
    from core import actions

    done = actions.answer_label_request(workspace(ws), who, int(request_id), label, skip=skip)
    clear()
    return done
