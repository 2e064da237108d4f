"""Data profile tables and figures on the small synthetic dataset of conftest.PROFILE_EVENTS (values by hand)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from bfmscale.data import profile  # noqa: E402
from bfmscale.data.dataset import load_prepared  # noqa: E402
from bfmscale.errors import BfmError  # noqa: E402
from bfmscale.plots.style import apply_style, save_figure  # noqa: E402
from conftest import leftovers  # noqa: E402

# Hand counts over the kept users u1 (4 events), u2 (3), u3 (5); u4 (2 events) is dropped by min_history=3.
# Item events: A 5, B 3, C 2, D 1, E 1 (codes A=1 .. E=5); kept timestamps sorted:
# 100 120 150 200 220 250 300 320 350 400 420 520 -> cut at the 0.9 'lower' quantile: index floor(0.9 * 11) = 9 -> 400.
EXPECTED_SUMMARY = {
    "users_before_filter": "4",
    "items_before_filter": "5",
    "events_before_filter": "14",
    "min_history": "3",
    "users": "3",
    "items": "5",
    "events": "12",
    "density": 12 / 15,
    "seq_len_min": "3",
    "seq_len_median": 4.0,
    "seq_len_mean": 4.0,
    "seq_len_p90": 4.8,  # linear between 4 and 5 at 0.8
    "seq_len_max": "5",
    "share_events_top20pct_items": 5 / 12,  # top 20% of 5 items = item A
    "items_with_lt5_events": "4",
    "first_event": "1970-01-01T00:01:40",
    "last_event": "1970-01-01T00:08:40",
    "temporal_cut": "1970-01-01T00:06:40",
    "loo_train_events": "6",
    "temporal_test_events": "2",  # 420 and 520
}


@pytest.fixture(scope="module")
def ds(profile_dataset):
    return load_prepared(profile_dataset)


def test_summary_table(ds):
    table = profile.summary_table(ds)
    assert list(table.columns) == ["statistic", "value", "dataset"]
    assert set(table["dataset"]) == {"syn"}
    got = dict(zip(table["statistic"], table["value"]))
    assert list(got) == list(EXPECTED_SUMMARY)
    for name, want in EXPECTED_SUMMARY.items():
        if isinstance(want, float):
            assert float(got[name]) == pytest.approx(want), name
        else:
            assert got[name] == want, name


def test_item_popularity(ds):
    pop = profile.item_popularity(ds)
    assert list(pop.columns) == ["item", "events", "rank", "cum_share"]
    assert list(pop["item"]) == [1, 2, 3, 4, 5]  # D and E tie at 1 event: lower code first
    assert list(pop["events"]) == [5, 3, 2, 1, 1]
    assert list(pop["rank"]) == [1, 2, 3, 4, 5]
    assert list(pop["cum_share"]) == pytest.approx([5 / 12, 8 / 12, 10 / 12, 11 / 12, 1.0])
    items = dict(zip(ds.items["item"], ds.items["item_id"]))
    assert [items[i] for i in pop["item"]] == ["A", "B", "C", "D", "E"]


EXPECTED_COVERAGE = {
    # (kind, feature): (type, coverage, distinct)
    ("item", "genres"): ("multi_categorical", 0.8, 3),  # C has no genres; x, y, z
    ("item", "year"): ("numeric", 0.8, 4),  # B has no year
    ("item", "kind"): ("categorical", 0.8, 2),  # C has no kind; k1, k2
    ("event", "rating"): ("numeric", 1.0, 5),  # ratings 1..5 among kept events
    ("event", "device"): ("categorical", 1.0, 3),  # web, app, tv
}


def test_feature_coverage(ds):
    cov = profile.feature_coverage(ds)
    assert list(cov.columns) == ["kind", "feature", "type", "coverage", "distinct"]
    rows = {(r.kind, r.feature): (r.type, r.coverage, r.distinct) for r in cov.itertuples(index=False)}
    assert set(rows) == set(EXPECTED_COVERAGE) | {("item", "title")}
    for key, (typ, coverage, distinct) in EXPECTED_COVERAGE.items():
        assert rows[key][0] == typ, key
        assert rows[key][1] == pytest.approx(coverage), key
        assert rows[key][2] == distinct, key
    assert rows[("item", "title")][:2] == ("text", pytest.approx(0.8))  # C has an empty title


def test_feature_coverage_text_distinct_excludes_missing(ds):
    cov = profile.feature_coverage(ds).set_index(["kind", "feature"])
    assert cov.loc[("item", "title"), "distinct"] == 4  # Alpha, Beta, Delta, Echo (C's title is missing)


def test_plots_return_figures(ds):
    apply_style()
    figs = [profile.plot_sequence_lengths(ds), profile.plot_popularity(ds), profile.plot_events_over_time(ds)]
    try:
        for fig in figs:
            assert isinstance(fig, plt.Figure) and len(fig.axes) == 1
        hist_ax, pop_ax, time_ax = (f.axes[0] for f in figs)
        assert sum(p.get_height() for p in hist_ax.patches) == 3  # 3 users
        assert hist_ax.get_xscale() == "log" and "syn" in hist_ax.get_title()
        x, y = pop_ax.lines[0].get_data()
        assert list(x) == [1, 2, 3, 4, 5] and list(y) == [5, 3, 2, 1, 1]
        assert pop_ax.get_xscale() == "log" and pop_ax.get_yscale() == "log"
        assert [p.get_height() for p in time_ax.patches] == [12]  # all events in January 1970
    finally:
        for fig in figs:
            plt.close(fig)


def test_save_figure_writes_png_and_svg(ds, tmp_path):
    fig = profile.plot_popularity(ds)
    try:
        paths = save_figure(fig, tmp_path / "figs", "item_popularity")
    finally:
        plt.close(fig)
    assert paths == [tmp_path / "figs" / "item_popularity.png", tmp_path / "figs" / "item_popularity.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in paths[1].read_text()
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["item_popularity.png", "item_popularity.svg"]
    assert leftovers(tmp_path / "figs") == []


def test_load_prepared_missing_file(profile_dataset, tmp_path):
    partial = tmp_path / "syn"
    partial.mkdir()
    for p in profile_dataset.iterdir():
        if p.name != "vocab.json":
            (partial / p.name).write_bytes(p.read_bytes())
    with pytest.raises(BfmError, match=r"vocab\.json: not found"):
        load_prepared(partial)


def test_prepared_counts_match_hand(ds):
    assert (ds.n_users, ds.n_items, len(ds.events)) == (3, 5, 12)
    assert isinstance(ds.events, pd.DataFrame)
