"""Small synthetic prepared datasets for model / training tests (built through the real prepare stage)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bfmscale.data.dataset import PreparedDataset, load_prepared
from bfmscale.data.prepare import PrepareConfig, prepare
from bfmscale.data.readers import RawData


def make_prepared(root: Path, n_users: int = 24, n_items: int = 40, min_len: int = 6, max_len: int = 30,
                  seed: int = 0, event_extras: bool = False) -> PreparedDataset:
    """Random users with item histories, ratings, and items with genres / year / title / a categorical;
    `event_extras` adds event features with gaps: numeric `amount`, categorical `channel`, list-valued `tags`."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        n = int(rng.integers(min_len, max_len + 1))
        items = rng.choice(n_items, size=n, replace=False) if n <= n_items else rng.integers(0, n_items, n)
        ts = np.sort(rng.integers(1_000_000, 2_000_000, n))
        for it, t in zip(items, ts):
            rows.append({"user_id": f"u{u}", "item_id": f"i{it}", "timestamp": int(t), "rating": float(rng.integers(1, 6))})
    events = pd.DataFrame(rows)
    if event_extras:
        amount = rng.gamma(2.0, 20.0, len(events))
        events["amount"] = np.where(rng.random(len(events)) < 0.15, np.nan, amount)
        channel = rng.choice(["app", "pos", "web"], len(events)).astype(object)
        events["channel"] = np.where(rng.random(len(events)) < 0.1, None, channel)
        tags = [list(rng.choice(["gift", "sale", "new", "bulk"], int(rng.integers(0, 4)), replace=False))
                for _ in range(len(events))]
        events["tags"] = [None if rng.random() < 0.1 else t for t in tags]
    genres = ["Action", "Comedy", "Drama", "Horror"]
    items = pd.DataFrame({
        "item_id": [f"i{i}" for i in range(n_items)],
        "title": [f"movie {i} the {genres[i % 4].lower()}" for i in range(n_items)],
        "year": [float(1980 + i % 30) if i % 7 else np.nan for i in range(n_items)],
        "genres": [[genres[i % 4], genres[(i * 3) % 4]] if i % 5 else [] for i in range(n_items)],
        "studio": [f"s{i % 3}" for i in range(n_items)],
    })
    raw = RawData(events=events, events_source="events.parquet", items=items, items_source="items.parquet",
                  item_features={"title": "text", "year": "numeric", "genres": "multi_categorical", "studio": "categorical"})
    out = Path(root) / ("synth-events" if event_extras else "synth")
    prepare(raw, out, PrepareConfig(min_history=5), "synth")
    return load_prepared(out)
