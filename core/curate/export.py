"""Exporting curated samples as Parquet or JSON Lines, written atomically."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from core import atomic
from core.store import Store

KEPT = ("kept", "approved")


def export_samples(store: Store, out: Path, record: Callable[[int], None], **filters) -> int:
    """record(count) runs once the file is written and before it takes its name (actions.export_samples
    audits there): an export the log refuses leaves no file."""
    frame = store.sample_query(**filters)
    if filters.get("status") is None:
        frame = frame[frame["status"].isin(KEPT)]
    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".jsonl"):
        raise ValueError(f"{out}: export to .parquet or .jsonl")

    def write(tmp: Path) -> None:
        if suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_json(tmp, orient="records", lines=True, date_format="iso", force_ascii=False)
        record(len(frame))

    atomic.write_with(out, write)
    return len(frame)
