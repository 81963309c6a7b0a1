"""Exporting curated samples as Parquet or JSON Lines, written atomically."""
from __future__ import annotations

from core import atomic
from pathlib import Path

from core.store import Store

KEPT = ("kept", "approved")


def export_samples(store: Store, out: Path, **filters) -> int:
    frame = store.sample_query(**filters)
    if filters.get("status") is None:
        frame = frame[frame["status"].isin(KEPT)]
    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".jsonl"):
        raise ValueError(f"{out}: export to .parquet or .jsonl")
    if suffix == ".parquet":
        atomic.write_with(out, lambda tmp: frame.to_parquet(tmp, index=False))
    else:
        atomic.write_with(out, lambda tmp: frame.to_json(tmp, orient="records", lines=True, date_format="iso",
                                                         force_ascii=False))
    return len(frame)
