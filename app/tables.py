"""Tables for people: every frame a page shows passes through `readable` (and `show` draws it).

The store's frames carry its column names (`candidate_version`, `created_at`), microsecond timestamps,
JSON strings and NULLs. A page names the columns it shows with the words a person reads; `readable`
renames them, writes times to the second (UTC, said once in the page's caption), unpacks JSON and turns
every empty cell into "–". It never imports the store: pages pass it what `app.queries` read.
"""
from __future__ import annotations

import json
import math
from datetime import date, datetime

import pandas as pd

EMPTY = "–"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
TIMES_ARE_UTC = "Times are UTC."


def gate_name(kind) -> str:
    """A gate's kind in words: data_review -> "data review"."""
    return str(kind).replace("_", " ")


def is_empty(value) -> bool:
    if value is None or value is pd.NaT:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and value.strip().lower() in {"", "none", "nan", "nat", "null"}:
        return True
    try:
        return bool(pd.isna(value)) if not isinstance(value, (list, dict, tuple)) else False
    except (TypeError, ValueError):
        return False


def when(value) -> str:
    """A stored UTC timestamp to the second; "–" when there is none."""
    if is_empty(value):
        return EMPTY
    return pd.Timestamp(value).strftime(TIME_FORMAT)


def number(value, digits: int = 4) -> str:
    if is_empty(value):
        return EMPTY
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (isinstance(value, float) and float(value).is_integer() and digits == 0):
        return f"{int(value):,}"
    return f"{float(value):,.{digits}f}"


def percent(value, digits: int = 2) -> str:
    return EMPTY if is_empty(value) else f"{100 * float(value):.{digits}f}%"


def duration(seconds) -> str:
    if is_empty(seconds):
        return EMPTY
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def text(value) -> str:
    """Any cell as a string a person reads: lists joined, dicts as `key: value`, booleans as yes/no."""
    if isinstance(value, (list, tuple)):
        return ", ".join(text(v) for v in value) if value else EMPTY
    if isinstance(value, dict):
        return ", ".join(f"{k}: {text(v)}" for k, v in value.items()) if value else EMPTY
    if is_empty(value):
        return EMPTY
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (datetime, date, pd.Timestamp)):
        return when(value)
    if isinstance(value, float):
        return number(value)
    return str(value)


def unpack_json(frame: pd.DataFrame, column: str, prefix: str = "") -> pd.DataFrame:
    """A column of JSON objects (strings or dicts) spread into one column per key, in first-seen order."""
    parsed = frame[column].map(lambda v: v if isinstance(v, dict) else (json.loads(v) if not is_empty(v) else {}))
    keys: list[str] = []
    for d in parsed:
        keys += [k for k in d if k not in keys]
    out = frame.drop(columns=[column]).copy()
    for key in keys:
        out[f"{prefix}{key}"] = parsed.map(lambda d, k=key: d.get(k))
    return out


def readable(frame: pd.DataFrame, columns: dict[str, str], formats: dict[str, str] | None = None) -> pd.DataFrame:
    """The columns a person reads, under their names, every cell a string.

    columns: store column -> the heading shown, in the order shown (a column missing from the frame is
    an empty column rather than an error: old workspaces lack newer fields).
    formats: store column -> "time" | "percent" | "number" | "count" | "duration" | "text" (default:
    by the values' type)."""
    formats = formats or {}
    shown = {}
    for column, heading in columns.items():
        values = frame[column] if column in frame else pd.Series([None] * len(frame), index=frame.index)
        kind = formats.get(column) or _kind(values)
        render = {"time": when, "percent": percent, "number": number, "count": lambda v: number(v, 0),
                  "duration": duration}.get(kind, text)
        shown[heading] = [render(v) for v in values.tolist()]
    return pd.DataFrame(shown, index=range(len(frame)), columns=list(columns.values()))


def _kind(values: pd.Series) -> str:
    if pd.api.types.is_datetime64_any_dtype(values):
        return "time"
    if pd.api.types.is_bool_dtype(values):
        return "text"
    if pd.api.types.is_integer_dtype(values):
        return "count"
    if pd.api.types.is_float_dtype(values):
        return "number"
    return "text"


def show(frame: pd.DataFrame, columns: dict[str, str], formats: dict[str, str] | None = None, **kwargs):
    """st.dataframe of `readable(frame, ...)`, index hidden; kwargs go to st.dataframe (height,
    on_select, selection_mode, key, ...). Returns what st.dataframe returns (the selection, if asked)."""
    import streamlit as st  # app.tables stays importable (and testable) without a running app

    return st.dataframe(readable(frame, columns, formats), hide_index=True, **kwargs)
