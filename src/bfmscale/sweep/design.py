"""Sweep designs are data (YAML / params), expanded here into run configs, in one place.

A design has a `name`, a `base` run config (nested like RunConfig), `seeds`, a `grid` and at most one block
(isoflop or split); the grid may not set the keys its block sets. The axes:
  grid:    {dotted.key: [values, ...]}              cartesian product (batch axis: train.batch_size; negatives:
                                                     train.n_negatives; budgets: train.flops; ...)
  isoflop: {budgets, n_models, spread, tokens_per_param, aspect, head_dim}
           for each budget C, n_models transformer sizes N spread log-evenly over [N*/spread, N*·spread] around
           N* = sqrt(C / (6 · tokens_per_param)), each mapped to a shape by the aspect rule below; tokens follow
           from training to C.
  split:   {shares: [...], total_params}           embedder share s = N_emb / (N_emb + N_ctx) at a fixed total:
           the contextualizer takes (1 - s)·total by the aspect rule, the feature embedder's width is searched so
           that it holds s/(1 - s) of the contextualizer's exact count: s is met up to the width's granularity
           (a share it misses by more than 10% is reported), the total moves with the aspect rule's rounding.
Aspect rule (one for every design): with N = 12·L·d² (non-embedding) and d = aspect·L, d = (N·aspect/12)^(1/3)
rounded to a multiple of head_dim, L = max(1, round(d / aspect)), heads = d / head_dim, d_ff = 4·d.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bfmscale.config import ModelConfig, RunConfig, apply_values, check, read_mapping, section_from_dict
from bfmscale.errors import BfmError
from bfmscale.model.accounting import embedder_share, param_counts
from bfmscale.model.catalog import EventInputs, ItemCatalog
from bfmscale.sweep.store import run_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IsoflopSpec:
    """For each budget C, `n_models` transformer sizes log-evenly over [N*/spread, N*·spread], N* = sqrt(C / (6·tpp))."""

    budgets: tuple[float, ...]
    n_models: int = 5
    spread: float = 4.0
    tokens_per_param: float = 20.0
    aspect: int = 32
    head_dim: int = 32

    def __post_init__(self) -> None:
        check(all(b > 0 for b in self.budgets), "isoflop.budgets", list(self.budgets), "positive FLOP counts")
        check(self.n_models >= 1, "isoflop.n_models", self.n_models, "an integer >= 1")
        check(self.spread >= 1, "isoflop.spread", self.spread, "a number >= 1 (the largest size over N*)")
        check(self.tokens_per_param > 0, "isoflop.tokens_per_param", self.tokens_per_param, "a positive number")
        _check_shape_rule("isoflop", self.aspect, self.head_dim)


@dataclass(frozen=True)
class SplitSpec:
    """Embedder shares s = N_emb / (N_emb + N_ctx) of a fixed total parameter count."""

    shares: tuple[float, ...]
    total_params: float
    aspect: int = 32
    head_dim: int = 32

    def __post_init__(self) -> None:
        check(all(0 < s < 1 for s in self.shares), "split.shares", list(self.shares), "shares in (0, 1)")
        check(self.total_params > 0, "split.total_params", self.total_params, "a positive parameter count")
        _check_shape_rule("split", self.aspect, self.head_dim)


def _check_shape_rule(block: str, aspect: int, head_dim: int) -> None:
    check(aspect >= 1, f"{block}.aspect", aspect, "an integer >= 1 (d_model per layer)")
    check(head_dim >= 1, f"{block}.head_dim", head_dim, "an integer >= 1")


@dataclass(frozen=True)
class Design:
    """A named set of runs described as data."""

    name: str
    base: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    grid: dict[str, list[Any]] = field(default_factory=dict)
    isoflop: IsoflopSpec | None = None
    split: SplitSpec | None = None

    def __post_init__(self) -> None:
        check(bool(self.name.strip()), "name", self.name, "a design name")
        if self.isoflop and self.split:
            raise BfmError("isoflop and split both set the model's shape; expected one of them")
        # A block's keys would silently override the same keys in the grid.
        for block, spec, keys in (("isoflop", self.isoflop, ISOFLOP_KEYS), ("split", self.split, SPLIT_KEYS)):
            clash = [key for key in self.grid if spec and key in keys]
            if clash:
                raise BfmError(f"grid.{clash[0]} is set by the {block} block; expected keys it leaves alone "
                               f"(it sets {', '.join(keys)})")
        # The base config, and each seed and grid value on it, must be a valid run config.
        points = [("base", [])] + [("seeds", [("seed", s)]) for s in self.seeds]
        points += [("grid", [(k, v)]) for k, values in self.grid.items() for v in values]
        for where, pairs in points:
            try:
                RunConfig.from_dict(apply_values(self.base, pairs))
            except BfmError as exc:
                raise BfmError(f"{where}: {exc}") from None

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "design") -> Design:
        """Build and validate a design; an error names `source` and the key."""
        return section_from_dict(cls, raw, source=source)


def load_design(path: Path | str) -> Design:
    """Read a design YAML file."""
    return Design.from_dict(read_mapping(path, "a sweep design with name, base, seeds, grid / isoflop / split"),
                            str(path))


def shape_for(n_params: float, aspect: int = 32, head_dim: int = 32) -> dict[str, int]:
    """The aspect rule: transformer (non-embedding, 12·L·d²) size -> d_model, n_layers, n_heads, d_ff."""
    d = max(head_dim, int(round((n_params * aspect / 12) ** (1 / 3) / head_dim)) * head_dim)
    layers = max(1, int(round(d / aspect)))
    return {"d_model": d, "n_layers": layers, "n_heads": d // head_dim, "d_ff": 4 * d}


Point = list[tuple[str, Any]]  # (dotted key, value) pairs applied to the base config


def _isoflop_points(spec: IsoflopSpec) -> list[Point]:
    points = []
    for c in spec.budgets:
        centre = math.sqrt(c / (6 * spec.tokens_per_param))
        seen = set()
        for n in centre * spec.spread ** np.linspace(-1, 1, spec.n_models):
            shape = shape_for(n, spec.aspect, spec.head_dim)
            sig = tuple(shape.values())
            if sig in seen:
                continue
            seen.add(sig)
            points.append([("train.flops", c)] + [(f"model.{k}", v) for k, v in shape.items()])
        if len(seen) < spec.n_models:
            log.warning("isoflop budget %.3g: %d of %d sizes are distinct under the aspect rule (head_dim %d); "
                        "a smaller head_dim or a larger budget gives more", c, len(seen), spec.n_models, spec.head_dim)
    return points


def feature_widths(w: int) -> dict[str, int]:
    """The feature embedder's widths at scale w: mlp_hidden = w, d_feature = w/8, id_dim = w/4."""
    return {"mlp_hidden": w, "d_feature": max(1, w // 8), "id_dim": max(1, w // 4)}


# The keys each block sets on a run (so a grid may not set them too).
ISOFLOP_KEYS = ("train.flops", *(f"model.{k}" for k in shape_for(1.0)))
SPLIT_KEYS = ("model.embedder", *(f"model.{k}" for k in {**shape_for(1.0), **feature_widths(1)}))


def embedder_width_for(target: float, model: ModelConfig, catalog: ItemCatalog, events: EventInputs) -> dict[str, int]:
    """Feature-embedder widths (`feature_widths`) whose parameter count is closest to `target`; the count grows with
    w, so a bisection finds it."""

    def count(w: int) -> int:
        cfg = ModelConfig(**{**model.__dict__, **feature_widths(w)})
        return param_counts(cfg, catalog, events)["embedder"]

    lo, hi = 1, 1 << 14
    while lo < hi:
        mid = (lo + hi) // 2
        if count(mid) < target:
            lo = mid + 1
        else:
            hi = mid
    best = min((w for w in (max(1, lo - 1), lo)), key=lambda w: abs(count(w) - target))
    return feature_widths(best)


def _split_points(spec: SplitSpec, base: RunConfig, catalog: ItemCatalog | None, events: EventInputs) -> list[Point]:
    if catalog is None:
        raise BfmError("split design: needs the dataset's item catalog (pass the prepared dataset)")
    points = []
    for s in spec.shares:
        shape = shape_for((1 - s) * spec.total_params, spec.aspect, spec.head_dim)
        model = ModelConfig(**{**base.model.__dict__, "embedder": "features", **shape})
        counts = param_counts(model, catalog, events)
        widths = embedder_width_for(s / (1 - s) * (counts["transformer"] + counts["positions"]), model, catalog, events)
        got = embedder_share(param_counts(ModelConfig(**{**model.__dict__, **widths}), catalog, events))
        if abs(got - s) > 0.1 * s:
            log.warning("split share %.3g: the nearest feature embedder width gives %.3g (d_model %d); a larger "
                        "total_params gives finer steps", s, got, shape["d_model"])
        points.append([("model.embedder", "features")] + [(f"model.{k}", v) for k, v in {**shape, **widths}.items()])
    return points


def expand(design: Design, catalog: ItemCatalog | None = None, events: EventInputs = EventInputs()) -> list[RunConfig]:
    """All run configs of a design, validated, without duplicates (by run key), in a stable order; a split design
    needs the dataset's item catalog and event inputs (`build_catalog`, `build_event_features`)."""
    base = RunConfig.from_dict(design.base)
    axes: list[list[Point]] = []
    if design.grid:
        keys = list(design.grid)
        axes.append([list(zip(keys, combo)) for combo in itertools.product(*design.grid.values())])
    if design.isoflop:
        axes.append(_isoflop_points(design.isoflop))
    if design.split:
        axes.append(_split_points(design.split, base, catalog, events))
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
