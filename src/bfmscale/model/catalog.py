"""Item catalog as tensors: every item's features, indexed by item code (row 0 = padding)."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from bfmscale.data.dataset import PreparedDataset

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
        vals = items[numeric_cols].to_numpy(dtype=np.float64)
        missing = np.isnan(vals)
        mean = np.nanmean(np.where(missing, np.nan, vals), axis=0)
        std = np.nanstd(np.where(missing, np.nan, vals), axis=0)
        z = np.where(missing, 0.0, (vals - mean) / np.where(std > 0, std, 1.0))
        block = np.concatenate([z, missing.astype(np.float64)], axis=1).astype(np.float32)
        cat.numeric = torch.cat([torch.zeros(1, block.shape[1]), torch.from_numpy(block)])
    train = ds.events[ds.events["loo"] == "train"]["item"].to_numpy()
    cat.popularity = torch.from_numpy(np.bincount(train, minlength=n + 1).astype(np.float64))
    return cat
