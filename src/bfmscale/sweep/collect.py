"""Collect a sweep into a table (one row per run) and summarize a store by status."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from bfmscale.config import RunConfig
from bfmscale.model.accounting import embedder_share, param_counts
from bfmscale.model.catalog import EventInputs, ItemCatalog
from bfmscale.sweep.store import RunStore, run_key

INFO_COLUMNS = ("flops", "flops_budget", "tokens", "steps", "epochs", "train_time", "eval_time", "wall_time",
                "tokens_per_s", "flops_per_s", "peak_memory_bytes", "memory_estimate_bytes", "embedder_share",
                "params_seed002", "device", "machine", "precision", "threads")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> dotted keys; lists become strings."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = str(v) if isinstance(v, list) else v
    return out


def collect(configs: list[RunConfig], store: RunStore) -> pd.DataFrame:
    """One row per run: key, status, config columns, every metric, params per part, FLOPs, tokens, time, memory."""
    rows = []
    for cfg in configs:
        key = run_key(cfg)
        row: dict[str, Any] = {"key": key, "status": store.state(key), **flatten(cfg.to_dict())}
        if row["status"] == "done":
            rec = store.metrics(key)
            row.update(rec["metrics"])
            row.update({f"params.{k}": v for k, v in rec["info"]["params"].items()})
            row.update({k: rec["info"].get(k) for k in INFO_COLUMNS})
        elif row["status"] == "failed":
            row["error"] = (store.status(key) or {}).get("error")
        rows.append(row)
    return pd.DataFrame(rows)


def store_status(store: RunStore) -> pd.DataFrame:
    """Runs by sweep and status with their FLOPs and wall time."""
    rows = []
    for key in store.keys():
        st = store.status(key) or {}
        rows.append({"sweep": st.get("sweep", ""), "status": store.state(key), "flops": st.get("flops") or 0.0,
                     "wall_time": st.get("wall_time") or 0.0})
    if not rows:
        return pd.DataFrame(columns=["sweep", "status", "runs", "flops", "wall_time"])
    df = pd.DataFrame(rows)
    return df.groupby(["sweep", "status"], as_index=False).agg(runs=("status", "size"), flops=("flops", "sum"),
                                                               wall_time=("wall_time", "sum"))


ModelInputs = Callable[[RunConfig], tuple[ItemCatalog, EventInputs]]  # e.g. executors.model_inputs_for


def model_sizes(configs: list[RunConfig], inputs: ModelInputs) -> pd.DataFrame:
    """Each run's parameter count and embedder share on its dataset's catalog and event features, without training."""
    rows = []
    for cfg in configs:
        counts = param_counts(cfg.model, *inputs(cfg))
        rows.append({"params": counts["total"], "embedder_share": embedder_share(counts)})
    return pd.DataFrame(rows)


def plan(configs: list[RunConfig], store: RunStore, inputs: ModelInputs | None = None) -> pd.DataFrame:
    """A design's runs before training: key, state in the store, the config settings that differ between runs, and
    (given each run's model inputs) its parameter count and embedder share."""
    table = collect(configs, store)
    varying = [c for c in flatten(configs[0].to_dict()) if table[c].astype(str).nunique() > 1]
    table = table[["key", "status", *varying]]
    return table if inputs is None else pd.concat([table, model_sizes(configs, inputs)], axis=1)
