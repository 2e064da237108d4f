"""Data profile: counts, sequence lengths, popularity long tail, events over time, feature coverage."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bfmscale.data.dataset import PreparedDataset


def summary_table(ds: PreparedDataset) -> pd.DataFrame:
    """One row per statistic (name, value) for results/tables/data_stats.csv."""
    st = ds.stats
    lengths = ds.sequences["items"].map(len)
    pop = item_popularity(ds)
    top20 = pop["events"].iloc[: max(1, int(0.2 * len(pop)))].sum() / pop["events"].sum()
    ts = ds.events["timestamp"]
    rows = {
        "users_before_filter": st["before_filter"]["users"],
        "items_before_filter": st["before_filter"]["items"],
        "events_before_filter": st["before_filter"]["events"],
        "min_history": st["prepare"]["min_history"],
        "users": ds.n_users,
        "items": ds.n_items,
        "events": len(ds.events),
        "density": st["density"],
        "seq_len_min": int(lengths.min()),
        "seq_len_median": float(lengths.median()),
        "seq_len_mean": float(lengths.mean()),
        "seq_len_p90": float(lengths.quantile(0.9)),
        "seq_len_max": int(lengths.max()),
        "share_events_top20pct_items": float(top20),
        "items_with_lt5_events": int((pop["events"] < 5).sum()),
        "first_event": pd.to_datetime(int(ts.min()), unit="s").isoformat(),
        "last_event": pd.to_datetime(int(ts.max()), unit="s").isoformat(),
        "temporal_cut": pd.to_datetime(st["temporal"]["cut_timestamp"], unit="s").isoformat(),
        "loo_train_events": st["loo"].get("train", 0),
        "temporal_test_events": st["temporal"].get("test", 0),
    }
    return pd.DataFrame({"statistic": list(rows), "value": [str(v) for v in rows.values()]}).assign(dataset=ds.name)


def item_popularity(ds: PreparedDataset) -> pd.DataFrame:
    """Items by event count, most popular first, with rank (1-based) and cumulative share of events."""
    counts = ds.events["item"].value_counts().rename("events").reset_index()
    counts = counts.sort_values(["events", "item"], ascending=[False, True]).reset_index(drop=True)
    counts["rank"] = np.arange(1, len(counts) + 1)
    counts["cum_share"] = counts["events"].cumsum() / counts["events"].sum()
    return counts


def feature_coverage(ds: PreparedDataset) -> pd.DataFrame:
    """Per item/event feature: type, share of rows with a value, number of distinct values."""
    rows = []
    for kind, table in (("item", ds.items), ("event", ds.events)):
        for col, typ in ds.features[kind].items():
            values = table[col]
            if typ == "multi_categorical":
                present = values.map(len) > 0
                distinct = len({t for v in values for t in v})
            elif typ == "text":
                present = values.str.len() > 0
                distinct = values[present].nunique()
            else:
                present = values.notna() & (values != 0 if typ == "categorical" else True)
                distinct = values[present].nunique()
            rows.append({"kind": kind, "feature": col, "type": typ, "coverage": float(present.mean()), "distinct": int(distinct)})
    return pd.DataFrame(rows)


def plot_sequence_lengths(ds: PreparedDataset) -> plt.Figure:
    """Histogram of per-user history lengths (log x)."""
    lengths = ds.sequences["items"].map(len)
    fig, ax = plt.subplots()
    bins = np.logspace(np.log10(max(1, lengths.min())), np.log10(lengths.max() + 1), 40)
    ax.hist(lengths, bins=bins)
    ax.set(xscale="log", xlabel="events per user", ylabel="users", title=f"{ds.name}: sequence lengths")
    ax.axvline(float(lengths.median()), color="k", ls="--", lw=1, label=f"median {lengths.median():.0f}")
    ax.legend()
    return fig


def plot_popularity(ds: PreparedDataset) -> plt.Figure:
    """Rank-frequency of items on log-log axes: the long tail."""
    pop = item_popularity(ds)
    fig, ax = plt.subplots()
    ax.plot(pop["rank"], pop["events"], marker=".", ls="none", ms=2)
    ax.set(xscale="log", yscale="log", xlabel="item rank", ylabel="events", title=f"{ds.name}: item popularity")
    return fig


def plot_events_over_time(ds: PreparedDataset) -> plt.Figure:
    """Events per month, with the temporal-split cut marked."""
    when = pd.to_datetime(ds.events["timestamp"], unit="s")
    monthly = when.dt.to_period("M").value_counts().sort_index()
    fig, ax = plt.subplots()
    ax.bar(monthly.index.to_timestamp(), monthly.to_numpy(), width=25)
    ax.axvline(pd.to_datetime(ds.stats["temporal"]["cut_timestamp"], unit="s"), color="k", ls="--", lw=1, label="temporal cut")
    ax.set(yscale="log", xlabel="month", ylabel="events", title=f"{ds.name}: events over time")
    ax.legend()
    fig.autofmt_xdate()
    return fig
