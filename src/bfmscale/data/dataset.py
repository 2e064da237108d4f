"""Load a prepared dataset (the prepare stage's outputs) into memory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bfmscale.errors import BfmError

FILES = ("events.parquet", "items.parquet", "users.parquet", "sequences.parquet", "vocab.json", "features.json", "stats.json")


@dataclass
class PreparedDataset:
    """Everything under data/prepared/<dataset>/ (see bfmscale.data.prepare for the layout)."""

    name: str
    events: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    sequences: pd.DataFrame
    vocab: dict[str, list[str]]
    features: dict[str, dict[str, str]]
    stats: dict[str, Any]
    path: Path | None = None

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_users(self) -> int:
        return len(self.users)


def load_prepared(path: Path | str) -> PreparedDataset:
    """Read a prepared dataset directory; a missing file is a one-line error naming it."""
    path = Path(path)
    for name in FILES:
        if not (path / name).is_file():
            raise BfmError(f"{path / name}: not found; expected a prepared dataset (run `bfmscale prepare` first)")

    def js(name: str) -> Any:
        return json.loads((path / name).read_text())

    return PreparedDataset(
        name=path.name,
        events=pd.read_parquet(path / "events.parquet"),
        items=pd.read_parquet(path / "items.parquet"),
        users=pd.read_parquet(path / "users.parquet"),
        sequences=pd.read_parquet(path / "sequences.parquet"),
        vocab=js("vocab.json"),
        features=js("features.json"),
        stats=js("stats.json"),
        path=path,
    )
