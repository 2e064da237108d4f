"""Validation of raw events and items: each problem is one line naming the file, column and expectation."""

from __future__ import annotations

import difflib
from typing import Any

import numpy as np
import pandas as pd

from bfmscale.data.readers import REQUIRED_EVENT_COLUMNS, RawData
from bfmscale.errors import BfmError


def _first_row(mask: pd.Series) -> int:
    return int(np.flatnonzero(mask.to_numpy())[0])


def check_columns(df: pd.DataFrame, required: tuple[str, ...], source: str) -> None:
    """Every required column present; a missing one is named with its closest match."""
    cols = [str(c) for c in df.columns]
    for col in required:
        if col not in cols:
            close = difflib.get_close_matches(col, cols, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise BfmError(f"{source}: missing required column {col!r}{hint}; found {', '.join(cols) or 'no columns'}; "
                           f"expected {', '.join(required)}")


def check_ids(df: pd.DataFrame, col: str, source: str) -> pd.Series:
    """No null ids; ids are returned as strings so that vocabularies are type-stable."""
    null = df[col].isna()
    if null.any():
        raise BfmError(f"{source}: column {col!r} has {int(null.sum())} null values (first at row {_first_row(null)}); "
                       "expected every row to have an id")
    return df[col].astype(str)


def check_timestamps(ts: pd.Series, source: str) -> pd.Series:
    """Timestamps as int64 seconds: numbers or datetimes; anything else (or NaN) is an error."""
    if pd.api.types.is_datetime64_any_dtype(ts):
        if getattr(ts.dt, "tz", None) is not None:
            ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
        if ts.isna().any():
            bad = ts.isna()
            raise BfmError(f"{source}: column 'timestamp' has {int(bad.sum())} missing values (first at row {_first_row(bad)}); "
                           "expected a time for every event")
        return (ts.astype("datetime64[ns]").astype("int64") // 10**9).astype("int64")
    num = pd.to_numeric(ts, errors="coerce")
    bad = num.isna() | ~np.isfinite(num.astype("float64"))
    if bad.any():
        first = _first_row(bad)
        raise BfmError(f"{source}: column 'timestamp' has {int(bad.sum())} non-numeric or missing values "
                       f"(first at row {first}: {ts.iloc[first]!r}); expected seconds since the epoch or datetimes")
    return num.astype("int64")


# Columns that prepare itself writes: an input column of the same name would clash with them.
RESERVED_EVENT_COLUMNS = ("user", "item", "pos", "loo", "temporal", "items", "timestamps", "_src")
RESERVED_ITEM_COLUMNS = ("item",)


def check_reserved(df: pd.DataFrame, reserved: tuple[str, ...], source: str) -> None:
    """No input column may take a name that prepare writes itself."""
    for col in df.columns:
        if str(col) in reserved:
            raise BfmError(f"{source}: column {str(col)!r} is a name prepare reserves ({', '.join(reserved)}); "
                           "expected it renamed")


def _is_number(v: Any) -> bool:
    """A value a numeric feature can hold: a finite number, a string that parses as one, or a missing / blank value."""
    if isinstance(v, str):
        if not v.strip():
            return True
        try:
            v = float(v)
        except ValueError:
            return False
    if v is None or v is pd.NA:
        return True
    if isinstance(v, (bool, np.bool_)):
        return True
    return isinstance(v, (int, float, np.number)) and not np.isinf(v)


def check_numbers(values: pd.Series, col: str, source: str) -> None:
    """A numeric feature holds finite numbers or missing values; an infinity, a word or a list is an error."""
    if pd.api.types.is_numeric_dtype(values):
        bad = pd.Series(np.isinf(values.to_numpy(dtype=np.float64)), index=values.index)
    else:
        bad = ~values.map(_is_number).astype(bool)
    if bad.any():
        row = _first_row(bad)
        v = values.iloc[row]
        v = v.tolist() if isinstance(v, (np.ndarray, np.generic)) else v  # shown as Python writes it
        raise BfmError(f"{source}: column {col!r} has {int(bad.sum())} values that are not finite numbers (first at "
                       f"row {row}: {v!r}); expected numbers or missing values for a numeric feature")


def validate_events(raw: RawData, dedupe: bool = False) -> pd.DataFrame:
    """Required columns, non-null ids, numeric timestamps, finite numeric features and no duplicate events; returns
    a clean copy."""
    src = raw.events_source
    df = raw.events
    check_columns(df, REQUIRED_EVENT_COLUMNS, src)
    check_reserved(df, RESERVED_EVENT_COLUMNS, src)
    if len(df) == 0:
        raise BfmError(f"{src}: has no rows; expected events")
    out = df.copy()
    out["user_id"] = check_ids(df, "user_id", src)
    out["item_id"] = check_ids(df, "item_id", src)
    out["timestamp"] = check_timestamps(df["timestamp"], src)
    for col in df.columns:
        if col not in REQUIRED_EVENT_COLUMNS and pd.api.types.is_numeric_dtype(df[col]):  # a numeric event feature
            check_numbers(df[col], str(col), src)
    dup = out.duplicated(subset=list(REQUIRED_EVENT_COLUMNS), keep="first")
    if dup.any():
        if not dedupe:
            raise BfmError(f"{src}: {int(dup.sum())} duplicate rows on (user_id, item_id, timestamp) "
                           f"(first at row {_first_row(dup)}); expected unique events (or set prepare.dedupe: true)")
        out = out[~dup.to_numpy()]
    return out.reset_index(drop=True)


def validate_items(raw: RawData, events: pd.DataFrame) -> pd.DataFrame | None:
    """Items have unique, non-null ids, cover every item in the events, and numeric features hold numbers."""
    if raw.items is None:
        return None
    src = raw.items_source
    items = raw.items.copy()
    check_columns(items, ("item_id",), src)
    check_reserved(items, RESERVED_ITEM_COLUMNS, src)
    items["item_id"] = check_ids(items, "item_id", src)
    dup = items["item_id"].duplicated()
    if dup.any():
        raise BfmError(f"{src}: item_id {items['item_id'][dup].iloc[0]!r} appears more than once; expected one row per item")
    missing = pd.Index(events["item_id"].unique()).difference(pd.Index(items["item_id"]))
    if len(missing):
        raise BfmError(f"{src}: {len(missing)} item_id values used in {raw.events_source} are missing "
                       f"(e.g. {missing[0]!r}); expected a row for every event's item")
    for col, typ in raw.item_features.items():
        if typ == "numeric":
            check_numbers(items[col], col, src)
    return items
