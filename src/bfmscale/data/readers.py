"""Read each raw format (RecBole atomic files, MovieLens CSV, own parquet) into one RawData shape."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bfmscale.config import read_mapping
from bfmscale.data.fetch import SOURCE_FILE
from bfmscale.data.sources import REGISTRY
from bfmscale.errors import BfmError

REQUIRED_EVENT_COLUMNS = ("user_id", "item_id", "timestamp")
# Inferred categorical when a string column has at most this many distinct values (or 5% of rows, if larger).
CATEGORICAL_MAX_DISTINCT = 100


@dataclass
class RawData:
    """Events (user_id, item_id, timestamp, event features) and optional items (item_id + typed features)."""

    events: pd.DataFrame
    events_source: str
    items: pd.DataFrame | None = None
    items_source: str = "items"
    item_features: dict[str, str] = field(default_factory=dict)


def read_atomic(path: Path) -> pd.DataFrame:
    """Read a RecBole atomic file (tab-separated, header `name:type`); float columns become numbers."""
    if not path.is_file():
        raise BfmError(f"{path}: file not found; expected a RecBole atomic file (run the fetch stage first)")
    df = pd.read_csv(path, sep="\t", dtype=str, quoting=csv.QUOTE_NONE, keep_default_na=False, na_values=[""])
    renamed = {}
    for col in df.columns:
        name, _, typ = col.partition(":")
        renamed[col] = name
        if typ in ("float", "int"):
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df.rename(columns=renamed)


def split_multi(values: pd.Series, sep: str | None) -> pd.Series:
    """Split a string column into lists of tokens (missing -> empty list)."""
    return values.map(lambda v: [t for t in (v.split(sep) if isinstance(v, str) else []) if t])


def read_registry(name: str, raw_dir: Path) -> RawData:
    """A registry dataset: `<name>.inter` events and `<name>.item` features, typed as the catalog says."""
    spec = REGISTRY[name]
    inter = raw_dir / f"{name}.inter"
    events = read_atomic(inter)
    items_path = raw_dir / f"{name}.item"
    items = read_atomic(items_path)
    keep = {"item_id": "item_id"} | {src: canon for src, (canon, _) in spec.item_features.items()}
    missing = [c for c in keep if c not in items.columns]
    if missing:
        raise BfmError(f"{items_path}: missing column {missing[0]!r}; expected columns {', '.join(keep)}")
    items = items[list(keep)].rename(columns=keep)
    types = {canon: typ for canon, typ in spec.item_features.values()}
    for col, typ in types.items():
        if typ == "multi_categorical":
            items[col] = split_multi(items[col], None)
        elif typ == "numeric":
            items[col] = pd.to_numeric(items[col], errors="coerce")
    return RawData(events=events, events_source=str(inter), items=items, items_source=str(items_path), item_features=types)


YEAR = re.compile(r"\((\d{4})\)\s*$")


def read_movielens_csv(raw_dir: Path) -> RawData:
    """A MovieLens CSV release (ratings.csv, movies.csv): title text, year from the title, '|' genres."""
    ratings, movies = raw_dir / "ratings.csv", raw_dir / "movies.csv"
    events = pd.read_csv(ratings).rename(columns={"userId": "user_id", "movieId": "item_id"})
    items = pd.read_csv(movies, dtype={"movieId": str}).rename(columns={"movieId": "item_id"})
    items["year"] = pd.to_numeric(items["title"].str.extract(YEAR, expand=False), errors="coerce")
    items["genres"] = split_multi(items["genres"].replace("(no genres listed)", ""), "|")
    events["item_id"] = events["item_id"].astype(str)
    types = {"title": "text", "year": "numeric", "genres": "multi_categorical"}
    return RawData(events=events, events_source=str(ratings), items=items[["item_id", *types]], items_source=str(movies),
                   item_features=types)


def is_list_valued(values: pd.Series) -> bool:
    """Whether a column holds lists (judged by its first present value)."""
    sample = values.dropna()
    return bool(len(sample)) and isinstance(sample.iloc[0], (list, tuple, np.ndarray))


def infer_feature_type(values: pd.Series) -> str:
    """Documented rule: numbers -> numeric; lists -> multi_categorical; few distinct strings -> categorical; else text."""
    if pd.api.types.is_bool_dtype(values):
        return "categorical"
    if pd.api.types.is_numeric_dtype(values):
        return "numeric"
    if is_list_valued(values):
        return "multi_categorical"
    sample = values.dropna()
    limit = max(CATEGORICAL_MAX_DISTINCT, int(0.05 * len(values)))
    return "categorical" if sample.astype(str).nunique() <= limit else "text"


def as_lists(values: pd.Series) -> pd.Series:
    """List-valued feature values as lists of strings; a missing value is the empty list."""
    return values.map(lambda v: [] if v is None or (isinstance(v, float) and np.isnan(v)) else [str(t) for t in v])


def read_parquet_source(raw_dir: Path, record: dict[str, Any]) -> RawData:
    """A team's own events.parquet (+ items.parquet), given the fetch record; item feature types declared in params
    or inferred."""
    events_path = raw_dir / "events.parquet"
    events = pd.read_parquet(events_path)
    src_events = record.get("events", {}).get("path", str(events_path))
    items = None
    types: dict[str, str] = {}
    src_items = "items.parquet"
    if (raw_dir / "items.parquet").is_file():
        items = pd.read_parquet(raw_dir / "items.parquet")
        src_items = record.get("items", {}).get("path", src_items)
        if "item_id" not in items.columns:
            raise BfmError(f"{src_items}: missing required column 'item_id' (found: {', '.join(map(str, items.columns))})")
        declared = record.get("item_features") or {}
        for col in declared:
            if col not in items.columns:
                raise BfmError(f"{src_items}: declared item feature {col!r} is not a column; expected one of "
                               f"{', '.join(c for c in items.columns if c != 'item_id')}")
        for col in items.columns:
            if col != "item_id":
                types[col] = declared.get(col) or infer_feature_type(items[col])
        for col, typ in types.items():
            if typ == "multi_categorical" and not pd.api.types.is_object_dtype(items[col]):
                raise BfmError(f"{src_items}: column {col!r} is declared multi_categorical; expected lists of values")
            if typ == "multi_categorical":
                items[col] = as_lists(items[col])
    return RawData(events=events, events_source=src_events, items=items, items_source=src_items, item_features=types)


def read_raw(raw_dir: Path) -> RawData:
    """Dispatch on the source recorded by the fetch stage."""
    src = raw_dir / SOURCE_FILE
    record = read_mapping(src, "a fetched dataset's record (run `bfmscale fetch`)", fmt="json")
    kind = record.get("source")
    if kind == "registry":
        return read_registry(record["dataset"], raw_dir)
    if kind == "url":
        return read_movielens_csv(raw_dir)
    if kind == "parquet":
        return read_parquet_source(raw_dir, record)
    raise BfmError(f"{src}: source {kind!r} is unknown; expected registry, url or parquet")
