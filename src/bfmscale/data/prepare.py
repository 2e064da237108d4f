"""prepare stage: canonical parquet dataset (events, items, users, sequences, splits, vocabularies, stats).

Layout of data/prepared/<dataset>/:
  events.parquet     one row per event, sorted by (user, timestamp, source order): user, item (int codes, 1-based;
                     0 is padding), timestamp (int64 s), pos (index in the user's sequence), loo (train/valid/test),
                     temporal (train/test), event features (numeric float32, categorical int32 codes, or
                     multi_categorical list<int32> codes: list-valued columns)
  items.parquet      item, item_id (raw), typed features: categorical int32 code, multi_categorical list<int32>,
                     numeric float32 (NaN when missing), text string
  users.parquet      user, user_id (raw)
  sequences.parquet  user, items, timestamps (+ event feature lists), chronological
  vocab.json         values of each categorical feature, code = index + 1
  features.json      {"item": {name: type}, "event": {name: type}}
  stats.json         filter, counts before and after it, split sizes, temporal cut
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from bfmscale.atomic import atomic_dir, write_json
from bfmscale.config import check, section_from_dict
from bfmscale.data.readers import RawData, as_lists, is_list_valued
from bfmscale.data.schema import validate_events, validate_items
from bfmscale.errors import BfmError

log = logging.getLogger(__name__)

# A categorical event feature with more distinct values than both of these is reported as a likely identifier.
ID_LIKE_MIN_VALUES = 1000
ID_LIKE_SHARE = 0.2


@dataclass(frozen=True)
class PrepareConfig:
    """Settings of the prepare stage (params.yaml `prepare:`)."""

    min_history: int = 5  # users with fewer events are dropped (leave-last-out needs >= 3)
    temporal_quantile: float = 0.9  # global temporal split: events after this timestamp quantile are test
    dedupe: bool = False  # drop exact duplicate events instead of failing

    def __post_init__(self) -> None:
        check(self.min_history >= 3, "prepare.min_history", self.min_history,
              "an integer >= 3 (leave-last-out needs a train, a validation and a test event)")
        check(0.0 < self.temporal_quantile < 1.0, "prepare.temporal_quantile", self.temporal_quantile,
              "a number in (0, 1)")

    @classmethod
    def from_params(cls, params: dict[str, Any], source: str = "params.yaml") -> PrepareConfig:
        """The `prepare:` section; an error names `source` and the key."""
        return section_from_dict(cls, params.get("prepare") or {}, "prepare.", source)


def encode(values: pd.Series) -> tuple[pd.Series, list[str]]:
    """Contiguous codes 1..n for the sorted distinct values (0 stays free for padding)."""
    vocab = sorted(values.dropna().unique().tolist())
    codes = pd.Series(pd.Categorical(values, categories=vocab).codes + 1, index=values.index).astype("int32")
    return codes, vocab


def encode_multi(values: pd.Series) -> tuple[pd.Series, list[str]]:
    """Codes for list-valued features (sorted vocabulary, 1-based)."""
    vocab = sorted({t for v in values for t in v})
    index = {t: i + 1 for i, t in enumerate(vocab)}
    return values.map(lambda v: [index[t] for t in v]), vocab


def count(events: pd.DataFrame) -> dict[str, int]:
    return {"users": int(events["user_id"].nunique()), "items": int(events["item_id"].nunique()), "events": int(len(events))}


def prepare(raw: RawData, out: Path, cfg: PrepareConfig, dataset: str) -> dict[str, Any]:
    """Validate, filter, encode, order and split; write everything to `out` atomically; return the stats."""
    events = validate_events(raw, dedupe=cfg.dedupe)
    items_raw = validate_items(raw, events)
    before = count(events)
    sizes = events.groupby("user_id", sort=False)["item_id"].transform("size")
    kept = events[sizes.to_numpy() >= cfg.min_history].copy()
    if kept.empty:
        raise BfmError(f"{raw.events_source}: no user has at least prepare.min_history={cfg.min_history} events "
                       f"(longest history: {int(sizes.max())}); expected some users left after the filter")
    after = count(kept)
    with logging_redirect_tqdm(), tqdm(total=5, desc=f"prepare {dataset}", unit="step") as steps:  # logs above the bar
        return _encode_and_write(raw, out, cfg, dataset, kept, items_raw, before, after, steps)


def _encode_and_write(raw: RawData, out: Path, cfg: PrepareConfig, dataset: str, kept: pd.DataFrame,
                      items_raw: pd.DataFrame | None, before: dict[str, int], after: dict[str, int],
                      steps: tqdm) -> dict[str, Any]:
    """Codes, chronological order, splits, item features, sequences, stats; written atomically to `out`."""

    kept["_src"] = np.arange(len(kept))
    kept["user"], user_vocab = encode(kept["user_id"])
    kept["item"], item_vocab = encode(kept["item_id"])
    kept = kept.sort_values(["user", "timestamp", "_src"], kind="stable").reset_index(drop=True)
    kept["pos"] = kept.groupby("user", sort=False).cumcount().astype("int32")
    length = kept.groupby("user", sort=False)["item"].transform("size").to_numpy()
    pos = kept["pos"].to_numpy()
    kept["loo"] = np.where(pos == length - 1, "test", np.where(pos == length - 2, "valid", "train"))
    cut = int(np.quantile(kept["timestamp"].to_numpy(), cfg.temporal_quantile, method="lower"))
    kept["temporal"] = np.where(kept["timestamp"].to_numpy() <= cut, "train", "test")
    steps.update()

    vocab: dict[str, list[str]] = {}
    event_features: dict[str, str] = {}
    for col in [c for c in raw.events.columns if c not in ("user_id", "item_id", "timestamp")]:
        if pd.api.types.is_numeric_dtype(kept[col]) and not pd.api.types.is_bool_dtype(kept[col]):
            kept[col] = kept[col].astype("float32")
            event_features[col] = "numeric"
        elif is_list_valued(kept[col]):
            kept[col], vocab[f"event.{col}"] = encode_multi(as_lists(kept[col]))
            event_features[col] = "multi_categorical"
        else:
            kept[col], vocab[f"event.{col}"] = encode(kept[col].astype(str))
            event_features[col] = "categorical"
        n_values = len(vocab.get(f"event.{col}", ()))
        if n_values > max(ID_LIKE_MIN_VALUES, ID_LIKE_SHARE * len(kept)):
            log.warning("event feature %r has %s distinct values in %s events: an identifier rather than a feature? A "
                        "feature model embeds each value (%s x d_model parameters); drop the column if it is not a "
                        "feature", col, f"{n_values:,}", f"{len(kept):,}", f"{n_values + 1:,}")
    steps.update()

    items = pd.DataFrame({"item": np.arange(1, len(item_vocab) + 1, dtype="int32"), "item_id": item_vocab})
    item_features: dict[str, str] = {}
    if items_raw is not None:
        feats = items_raw.set_index("item_id").loc[item_vocab].reset_index()
        for col, typ in raw.item_features.items():
            if typ == "categorical":
                items[col], vocab[col] = encode(feats[col].map(lambda v: None if pd.isna(v) else str(v)))
            elif typ == "multi_categorical":
                items[col], vocab[col] = encode_multi(feats[col])
            elif typ == "numeric":
                items[col] = pd.to_numeric(feats[col], errors="coerce").astype("float32").to_numpy()
            else:
                items[col] = feats[col].fillna("").astype(str).to_numpy()
            item_features[col] = typ
    users = pd.DataFrame({"user": np.arange(1, len(user_vocab) + 1, dtype="int32"), "user_id": user_vocab})
    steps.update()

    seq_cols = ["item", "timestamp", *event_features]
    sequences = kept.groupby("user", sort=True)[seq_cols].agg(list).reset_index()
    sequences = sequences.rename(columns={"item": "items", "timestamp": "timestamps"})
    steps.update()

    lengths = sequences["items"].map(len)
    stats = {
        "dataset": dataset,
        "prepare": asdict(cfg),
        "filter": f"users with fewer than {cfg.min_history} events removed",
        "before_filter": before,
        "after_filter": after,
        "removed_users": before["users"] - after["users"],
        "density": after["events"] / (after["users"] * after["items"]),
        "sequence_length": {"min": int(lengths.min()), "median": float(lengths.median()), "mean": float(lengths.mean()),
                            "max": int(lengths.max())},
        "loo": {k: int(v) for k, v in kept["loo"].value_counts().items()},
        "temporal": {"cut_timestamp": cut, "quantile": cfg.temporal_quantile,
                     **{k: int(v) for k, v in kept["temporal"].value_counts().items()}},
        "item_features": item_features,
        "event_features": event_features,
    }
    with atomic_dir(out) as tmp:
        cols = ["user", "item", "timestamp", "pos", "loo", "temporal", *event_features]
        kept[cols].to_parquet(tmp / "events.parquet", index=False)
        items.to_parquet(tmp / "items.parquet", index=False)
        users.to_parquet(tmp / "users.parquet", index=False)
        sequences.to_parquet(tmp / "sequences.parquet", index=False)
        write_json(tmp / "vocab.json", vocab)
        write_json(tmp / "features.json", {"item": item_features, "event": event_features})
        write_json(tmp / "stats.json", stats)
    steps.update()
    log.info("prepared %s: %s users, %s items, %s events", dataset, after["users"], after["items"], after["events"])
    return stats
