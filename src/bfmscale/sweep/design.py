"""Sweep designs are data (YAML / params), expanded here into run configs, in one place.

A design has a `name`, a `base` run config (nested like RunConfig), `seeds`, and any of:
  grid:    {dotted.key: [values, ...]}              cartesian product (batch axis: train.batch_size; negatives:
                                                     train.n_negatives; budgets: train.flops; ...)
  isoflop: {budgets, n_models, spread, tokens_per_param, aspect, head_dim}
           for each budget C, n_models transformer sizes N spread log-evenly over [N*/spread, N*·spread] around
           N* = sqrt(C / (6 · tokens_per_param)), each mapped to a shape by the aspect rule below; tokens follow
           from training to C.
  split:   {shares: [...], total_params}           embedder share s = N_emb / (N_emb + N_ctx) at a fixed total:
           the contextualizer takes (1 - s)·total by the aspect rule, the feature embedder's width is searched so
           that it holds s·total.
Aspect rule (one for every design): with N = 12·L·d² (non-embedding) and d = aspect·L, d = (N·aspect/12)^(1/3)
rounded to a multiple of head_dim, L = max(1, round(d / aspect)), heads = d / head_dim, d_ff = 4·d.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bfmscale.config import ModelConfig, RunConfig, apply_values
from bfmscale.errors import BfmError
from bfmscale.model.accounting import param_counts
from bfmscale.model.catalog import ItemCatalog
from bfmscale.sweep.store import run_key


@dataclass
class Design:
    """A named set of runs described as data."""

    name: str
    base: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    grid: dict[str, list[Any]] = field(default_factory=dict)
    isoflop: dict[str, Any] | None = None
    split: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "design") -> Design:
        known = set(cls.__dataclass_fields__)
        for key in raw:
            if key not in known:
                raise BfmError(f"{source}: {key} is not a design field; expected one of {', '.join(sorted(known))}")
        if not raw.get("name"):
            raise BfmError(f"{source}: name is missing; expected a design name")
        for key, values in (raw.get("grid") or {}).items():
            if not isinstance(values, list) or not values:
                raise BfmError(f"{source}: grid.{key} is {values!r}; expected a non-empty list")
        return cls(**{k: v for k, v in raw.items() if v is not None})


def load_design(path: Path | str) -> Design:
    """Read a design YAML file."""
    path = Path(path)
    if not path.is_file():
        raise BfmError(f"{path}: design file not found; expected a YAML sweep design")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise BfmError(f"{path}: expected a mapping with name, base, seeds, grid / isoflop / split")
    return Design.from_dict(raw, str(path))


def shape_for(n_params: float, aspect: int = 32, head_dim: int = 32) -> dict[str, int]:
    """The aspect rule: transformer (non-embedding, 12·L·d²) size -> d_model, n_layers, n_heads, d_ff."""
    d = max(head_dim, int(round((n_params * aspect / 12) ** (1 / 3) / head_dim)) * head_dim)
    layers = max(1, int(round(d / aspect)))
    return {"d_model": d, "n_layers": layers, "n_heads": d // head_dim, "d_ff": 4 * d}


Point = list[tuple[str, Any]]  # (dotted key, value) pairs applied to the base config


def _isoflop_points(spec: dict[str, Any]) -> list[Point]:
    budgets = [float(b) for b in spec["budgets"]]
    n_models = int(spec.get("n_models", 5))
    spread = float(spec.get("spread", 4.0))
    tpp = float(spec.get("tokens_per_param", 20.0))
    aspect, head_dim = int(spec.get("aspect", 32)), int(spec.get("head_dim", 32))
    points = []
    for c in budgets:
        centre = math.sqrt(c / (6 * tpp))
        seen = set()
        for n in centre * spread ** np.linspace(-1, 1, n_models):
            shape = shape_for(n, aspect, head_dim)
            sig = tuple(shape.values())
            if sig in seen:
                continue
            seen.add(sig)
            points.append([("train.flops", c)] + [(f"model.{k}", v) for k, v in shape.items()])
    return points


def embedder_width_for(target: float, model: ModelConfig, catalog: ItemCatalog, n_event_features: int) -> dict[str, int]:
    """Feature-embedder widths (mlp_hidden = w, d_feature = w/8, id_dim = w/4) whose parameter count is closest
    to `target`; the count grows with w, so a bisection finds it."""

    def count(w: int) -> int:
        cfg = ModelConfig(**{**model.__dict__, **widths(w)})
        return param_counts(cfg, catalog, n_event_features)["embedder"]

    def widths(w: int) -> dict[str, int]:
        return {"mlp_hidden": w, "d_feature": max(1, w // 8), "id_dim": max(1, w // 4)}

    lo, hi = 1, 1 << 14
    while lo < hi:
        mid = (lo + hi) // 2
        if count(mid) < target:
            lo = mid + 1
        else:
            hi = mid
    best = min((w for w in (max(1, lo - 1), lo)), key=lambda w: abs(count(w) - target))
    return widths(best)


def _split_points(spec: dict[str, Any], base: RunConfig, catalog: ItemCatalog | None,
                  n_event_features: int) -> list[Point]:
    if catalog is None:
        raise BfmError("split design: needs the dataset's item catalog (pass the prepared dataset)")
    total = float(spec["total_params"])
    aspect, head_dim = int(spec.get("aspect", 32)), int(spec.get("head_dim", 32))
    points = []
    for s in spec["shares"]:
        s = float(s)
        if not 0 < s < 1:
            raise BfmError(f"split.shares: {s} is out of range; expected shares in (0, 1)")
        shape = shape_for((1 - s) * total, aspect, head_dim)
        model = ModelConfig(**{**base.model.__dict__, "embedder": "features", **shape})
        widths = embedder_width_for(s * total, model, catalog, n_event_features)
        points.append([("model.embedder", "features")] + [(f"model.{k}", v) for k, v in {**shape, **widths}.items()])
    return points


def expand(design: Design, catalog: ItemCatalog | None = None, n_event_features: int = 1) -> list[RunConfig]:
    """All run configs of a design, validated, without duplicates (by run key), in a stable order."""
    base = RunConfig.from_dict(design.base)
    axes: list[list[Point]] = []
    if design.grid:
        keys = list(design.grid)
        axes.append([list(zip(keys, combo)) for combo in itertools.product(*design.grid.values())])
    if design.isoflop:
        axes.append(_isoflop_points(design.isoflop))
    if design.split:
        axes.append(_split_points(design.split, base, catalog, n_event_features))
    combos = [sum(parts, []) for parts in itertools.product(*axes)] if axes else [[]]
    configs, seen = [], set()
    for seed in design.seeds:
        for point in combos:
            cfg = RunConfig.from_dict(apply_values(base.to_dict(), point + [("seed", seed)]))
            key = run_key(cfg)
            if key not in seen:
                seen.add(key)
                configs.append(cfg)
    return configs
