"""The dataset's features as model inputs: the item catalog (every item's features by item code, row 0 = padding)
and the events' own features (one row per event)."""

from __future__ import annotations

import re
import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from bfmscale.config import ModelConfig
from bfmscale.data.dataset import PreparedDataset
from bfmscale.errors import BfmError

TOKEN = re.compile(r"[a-z0-9]+")
MAX_TEXT_TOKENS = 16


def hash_tokens(text: str, buckets: int, max_tokens: int = MAX_TEXT_TOKENS) -> list[int]:
    """Lower-cased word tokens hashed (crc32, stable across runs) into 1..buckets."""
    return [zlib.crc32(t.encode()) % buckets + 1 for t in TOKEN.findall(text.lower())[:max_tokens]]


def _pad(rows: list[list[int]]) -> torch.Tensor:
    width = max(1, max((len(r) for r in rows), default=1))
    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.from_numpy(out)


@dataclass
class ItemCatalog:
    """Per-item feature tensors with n_items + 1 rows; sizes needed to build the embedder tables."""

    n_items: int
    categorical: dict[str, torch.Tensor] = field(default_factory=dict)  # [I+1] codes, 0 = missing
    categorical_sizes: dict[str, int] = field(default_factory=dict)
    multi: dict[str, torch.Tensor] = field(default_factory=dict)  # [I+1, max_len] codes, 0 = pad
    multi_sizes: dict[str, int] = field(default_factory=dict)
    numeric: torch.Tensor | None = None  # [I+1, 2 * n_numeric]: z-scored value (0 if missing), missing flag
    text: dict[str, torch.Tensor] = field(default_factory=dict)  # [I+1, MAX_TEXT_TOKENS] hashed ids, 0 = pad
    popularity: torch.Tensor | None = None  # [I+1] training-event counts (row 0 = 0)

    @property
    def n_numeric_inputs(self) -> int:
        return 0 if self.numeric is None else int(self.numeric.shape[1])


def zscore(vals: np.ndarray, fit: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Columns z-scored with the mean and std of the rows `fit` (default: all), 0 where missing; and the missing mask."""
    missing = np.isnan(vals)
    ref = vals if fit is None else vals[fit]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column with no values: mean 0, std 1
        mean, std = np.nanmean(ref, axis=0), np.nanstd(ref, axis=0)
    mean = np.where(np.isnan(mean), 0.0, mean)
    std = np.where(np.isnan(std) | (std == 0), 1.0, std)
    return np.where(missing, 0.0, (vals - mean) / std), missing


def build_catalog(ds: PreparedDataset, text_buckets: int) -> ItemCatalog:
    """Tensorize the prepared items table; popularity counts come from leave-last-out training events only."""
    items = ds.items
    n = len(items)
    cat = ItemCatalog(n_items=n)
    numeric_cols = []
    for col, typ in ds.features["item"].items():
        if typ == "categorical":
            cat.categorical[col] = torch.cat([torch.zeros(1, dtype=torch.long), torch.tensor(items[col].to_numpy(), dtype=torch.long)])
            cat.categorical_sizes[col] = len(ds.vocab[col]) + 1
        elif typ == "multi_categorical":
            cat.multi[col] = _pad([[]] + [list(v) for v in items[col]])
            cat.multi_sizes[col] = len(ds.vocab[col]) + 1
        elif typ == "numeric":
            numeric_cols.append(col)
        else:
            cat.text[col] = _pad([[]] + [hash_tokens(t, text_buckets) for t in items[col]])
    if numeric_cols:
        z, missing = zscore(items[numeric_cols].to_numpy(dtype=np.float64))
        block = np.concatenate([z, missing.astype(np.float64)], axis=1).astype(np.float32)
        cat.numeric = torch.cat([torch.zeros(1, block.shape[1]), torch.from_numpy(block)])
    train = ds.events[ds.events["loo"] == "train"]["item"].to_numpy()
    cat.popularity = torch.from_numpy(np.bincount(train, minlength=n + 1).astype(np.float64))
    return cat


# Event codes travel in the float32 feature tensor beside the numeric columns; float32 holds integers exactly to 2**24.
MAX_EVENT_CODES = 2**24
MAX_EVENT_TAGS = 16  # codes kept per list-valued event feature (the first ones), like MAX_TEXT_TOKENS


@dataclass(frozen=True)
class EventInputs:
    """How a history event's own features reach the model: `numeric` float columns (z-scored values, then a missing
    flag for each feature that has gaps), then one code column per categorical feature (0 = missing), then for each
    list-valued (multi_categorical) feature a block of code columns padded with 0."""

    numeric: int = 0
    categorical: tuple[int, ...] = ()  # embedding rows per categorical feature: its vocabulary + 1
    multi: tuple[tuple[int, int], ...] = ()  # (embedding rows, code columns) per multi_categorical feature

    @property
    def width(self) -> int:
        return self.numeric + len(self.categorical) + sum(w for _, w in self.multi)

    def used_by(self, cfg: ModelConfig) -> EventInputs:
        """The event features a model of `cfg` reads: all of them for a feature embedder that uses event features,
        else none (an ID table has no event inputs)."""
        return self if cfg.embedder == "features" and cfg.use_event_features else EventInputs()


def build_event_features(ds: PreparedDataset) -> tuple[torch.Tensor | None, EventInputs]:
    """[E, width] float32 event features in the prepared events' order (None if there are none), and their layout.
    Numeric features are z-scored with leave-last-out training events' mean and std."""
    ev = ds.events
    kinds = ds.features["event"]
    numeric = [c for c, t in kinds.items() if t == "numeric"]
    blocks = []
    if numeric:
        z, missing = zscore(ev[numeric].to_numpy(dtype=np.float64), (ev["loo"] == "train").to_numpy())
        blocks += [z, missing[:, missing.any(axis=0)]]
    n_numeric = sum(b.shape[1] for b in blocks)

    def rows(c: str) -> int:
        n = len(ds.vocab[f"event.{c}"]) + 1
        if n > MAX_EVENT_CODES:
            raise BfmError(f"{ds.path}: event feature {c!r} has {n - 1:,} distinct values; expected at most "
                           f"{MAX_EVENT_CODES - 1:,} for a categorical event feature")
        return n

    categorical, multi = [], []
    for c in (c for c, t in kinds.items() if t == "categorical"):
        categorical.append(rows(c))
        blocks.append(ev[c].to_numpy(dtype=np.float64)[:, None])
    for c in (c for c, t in kinds.items() if t == "multi_categorical"):
        codes = _pad([list(v)[:MAX_EVENT_TAGS] for v in ev[c]]).numpy()
        multi.append((rows(c), codes.shape[1]))
        blocks.append(codes)
    inputs = EventInputs(numeric=n_numeric, categorical=tuple(categorical), multi=tuple(multi))
    if not blocks:
        return None, inputs
    return torch.from_numpy(np.concatenate(blocks, axis=1).astype(np.float32)), inputs
