"""Reading a user's CSV files and refusing bad input with one clear line, before anything is stored."""
from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


class DataError(ValueError):
    pass


@dataclass(frozen=True)
class Table:
    frame: pd.DataFrame  # columns: text, [label], row_num (1-based line of the data row)
    source: str
    sha256: str


def read_csv(path: Path, text_col: str, label_col: str | None, *, max_text_chars: int,
             max_file_bytes: int, keep_extra: bool = False) -> Table:
    """Load and validate one CSV. label_col=None reads unlabeled text only."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    size = path.stat().st_size
    if size > max_file_bytes:
        raise DataError(f"{path}: file is {size:,} bytes, above the limit of {max_file_bytes:,}")
    raw = path.read_bytes()
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}: not UTF-8 (bad byte 0x{raw[err.start]:02x} on line {line})") from None
    if not content.strip():
        raise DataError(f"{path}: file is empty")
    # The csv module's own field cap (128 KiB) would hide our clearer per-text limit below.
    csv.field_size_limit(max(max_file_bytes, 1 << 20))
    try:
        frame = pd.read_csv(io.StringIO(content), dtype=str, keep_default_na=False, na_filter=False,
                            engine="python")
    except (pd.errors.ParserError, csv.Error) as err:
        raise DataError(f"{path}: malformed CSV ({str(err).strip().splitlines()[-1]})") from None
    wanted = [text_col] + ([label_col] if label_col else [])
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        have = ", ".join(frame.columns.astype(str)) or "none"
        raise DataError(f"{path}: missing column '{missing[0]}' (columns found: {have}); "
                        f"pass --text-col/--label-col to name yours")
    if frame.empty:
        raise DataError(f"{path}: has a header but no rows")
    frame["row_num"] = range(2, len(frame) + 2)  # line numbers as an editor shows them
    texts = frame[text_col].astype(str).str.strip()
    blank = texts == ""
    if blank.any():
        raise DataError(f"{path}: blank text on line {int(frame.loc[blank, 'row_num'].iloc[0])}")
    too_long = texts.str.len() > max_text_chars
    if too_long.any():
        at = too_long.idxmax()
        raise DataError(f"{path}: text on line {int(frame.loc[at, 'row_num'])} has {len(texts[at]):,} "
                        f"characters, above the limit of {max_text_chars:,} (data.max_text_chars)")
    out = pd.DataFrame({"text": texts, "row_num": frame["row_num"]})
    if label_col:
        labels = frame[label_col].astype(str).str.strip()
        no_label = labels == ""
        if no_label.any():
            raise DataError(f"{path}: empty label on line {int(frame.loc[no_label, 'row_num'].iloc[0])}")
        out["label"] = labels
    if keep_extra:
        out = pd.concat([frame.drop(columns=["row_num"]), out[["row_num"]]], axis=1)
        out[text_col] = texts
    return Table(out.reset_index(drop=True), str(path.resolve()), hashlib.sha256(raw).hexdigest())


def check_known_labels(table: Table, known: set[str], what: str) -> None:
    unknown = sorted(set(table.frame["label"]) - known)
    if unknown:
        shown = ", ".join(f"'{u}'" for u in unknown[:5])
        raise DataError(f"{table.source}: {what} has label(s) never seen in the labeled file: {shown}")


def stratified_split(frame: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out about `fraction` of each class, keeping at least one training row per class."""
    train_parts, held_parts = [], []
    for _, group in frame.groupby("label", sort=True):
        group = group.sample(frac=1.0, random_state=seed)
        n_held = min(max(1, int(round(len(group) * fraction))), len(group) - 1)
        held_parts.append(group.iloc[:n_held])
        train_parts.append(group.iloc[n_held:])
    train = pd.concat(train_parts).sort_values("row_num").reset_index(drop=True)
    held = pd.concat(held_parts).sort_values("row_num").reset_index(drop=True)
    return train, held
