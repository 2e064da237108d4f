"""Bad own-data input through the real CLI: exit code 2, one stderr line naming file/parameter and column,
and data/prepared/own never half-written (absent, or byte-identical to the previous good prepare)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import pytest

from conftest import ERROR_LINE, OwnProject, good_events, good_items, leftovers, snapshot

EVENTS = "<events>"  # placeholders for the absolute source paths, filled in per test
ITEMS = "<items>"
PARAMS = "params.yaml"


@dataclass
class Case:
    id: str
    build: Callable[[], tuple[pd.DataFrame, pd.DataFrame | None, dict]]
    expect: list[str]  # fragments of the error message
    stage: str = "prepare"  # the first CLI command that fails
    # True when the error is raised inside prepare() after its progress bar started (see test_stderr_is_one_line)
    params: dict = field(default_factory=dict)


def ev(**changes) -> pd.DataFrame:
    df = good_events()
    for col, values in changes.items():
        df[col] = values
    return df


def _renamed(**mapping):
    return lambda: (good_events().rename(columns=mapping), good_items(), {})


def _nan_ts():
    df = good_events().astype({"timestamp": "float64"})
    df.loc[4, "timestamp"] = np.nan
    return df, good_items(), {}


def _nat_ts():
    df = good_events()
    df["timestamp"] = pd.to_datetime(df["timestamp"], unit="s")
    df.loc[3, "timestamp"] = pd.NaT
    return df, good_items(), {}


def _null_user():
    df = good_events()
    df.loc[2, "user_id"] = None
    return df, good_items(), {}


def _null_item():
    df = good_events()
    df.loc[6, "item_id"] = None
    return df, good_items(), {}


def _duplicates():
    df = good_events()
    return pd.concat([df, df.iloc[[5]]], ignore_index=True), good_items(), {}


def _text_ts():
    df = good_events().astype({"timestamp": str})
    df.loc[7, "timestamp"] = "yesterday"
    return df, good_items(), {}


CASES = [
    Case("ts_instead_of_timestamp", _renamed(timestamp="ts"), [EVENTS, "missing required column 'timestamp'",
                                                                "found user_id, item_id, ts"]),
    Case("no_user_id", _renamed(user_id="uid"), [EVENTS, "missing required column 'user_id'"]),
    Case("item_instead_of_item_id", _renamed(item_id="item"), [EVENTS, "missing required column 'item_id'"]),
    Case("non_numeric_timestamp", _text_ts, [EVENTS, "column 'timestamp'", "non-numeric", "row 7", "'yesterday'"]),
    Case("nan_timestamp", _nan_ts, [EVENTS, "column 'timestamp'", "1 non-numeric or missing", "row 4"]),
    Case("nat_timestamp", _nat_ts, [EVENTS, "column 'timestamp'", "1 missing", "row 3"]),
    Case("null_user_id", _null_user, [EVENTS, "column 'user_id'", "1 null", "row 2"]),
    Case("null_item_id", _null_item, [EVENTS, "column 'item_id'", "1 null", "row 6"]),
    Case("duplicate_rows", _duplicates, [EVENTS, "1 duplicate rows on (user_id, item_id, timestamp)", "row 10",
                                         "prepare.dedupe"]),
    Case("empty_events", lambda: (good_events().iloc[:0], good_items(), {}), [EVENTS, "has no rows"]),
    Case("all_users_below_min_history", lambda: (good_events(), good_items(), {"prepare": {"min_history": 5}}),
         [EVENTS, "prepare.min_history=5", "longest history: 4"]),
    Case("items_missing_from_items_file", lambda: (good_events(), good_items().iloc[:3], {}),
         [ITEMS, "1 item_id values", "'d'", EVENTS]),
    Case("duplicate_item_rows", lambda: (good_events(), pd.concat([good_items(), good_items().iloc[[1]]]), {}),
         [ITEMS, "item_id 'b' appears more than once"]),
    Case("items_without_item_id", lambda: (good_events(), good_items().rename(columns={"item_id": "id"}), {}),
         [ITEMS, "missing required column 'item_id'"]),
    Case("declared_feature_not_a_column",
         lambda: (good_events(), good_items(), {"item_features": {"colour": "categorical"}}),
         [ITEMS, "declared item feature 'colour'", "brand"]),
    Case("multi_categorical_not_lists",
         lambda: (good_events(), good_items(), {"item_features": {"brand": "multi_categorical"}}),
         [ITEMS, "column 'brand'", "multi_categorical", "lists"]),
    Case("numeric_feature_not_numbers",
         lambda: (good_events(), good_items().assign(size=["1", "2.5", "big", None]), {"item_features": {"size": "numeric"}}),
         [ITEMS, "column 'size'", "1 values that are not finite numbers", "row 2: 'big'", "numeric feature"]),
    Case("numeric_feature_lists",
         lambda: (good_events(), good_items().assign(tags=[["p"], [], ["q"], ["p"]]), {"item_features": {"tags": "numeric"}}),
         [ITEMS, "column 'tags'", "4 values that are not finite numbers", "row 0: ['p']"]),
    Case("infinite_item_feature", lambda: (good_events(), good_items().assign(w=[1.0, np.inf, 2.0, np.nan]), {}),
         [ITEMS, "column 'w'", "1 values that are not finite numbers", "row 1: inf"]),
    Case("infinite_event_feature", lambda: (ev(amount=[1.0] * 9 + [-np.inf]), good_items(), {}),
         [EVENTS, "column 'amount'", "1 values that are not finite numbers", "row 9: -inf"]),
    Case("min_history_below_3", lambda: (good_events(), good_items(), {"prepare": {"min_history": 2}}),
         [PARAMS, "prepare.min_history is 2"]),
    Case("unknown_prepare_setting", lambda: (good_events(), good_items(), {"prepare": {"min_hist": 2}}),
         [PARAMS, "prepare.min_hist is not a setting"]),
    Case("bad_profile", lambda: (good_events(), good_items(), {"profile": "nope"}),
         [PARAMS, "profile 'nope' is unknown", "expected one of p"], stage="fetch"),
    Case("unknown_dataset", lambda: (good_events(), good_items(), {"dataset": "ml-5m"}),
         [PARAMS, "profiles.p.dataset 'ml-5m' is unknown", "ml-100k", "ml-1m", "own"], stage="fetch"),
]


def run_case(project: OwnProject, case: Case, previous: bool):
    """Optionally a good fetch + prepare first; then the bad input. Returns (command, rc, stderr) of the first failure."""
    if previous:
        project.write(good_events(), good_items())
        rc, out, err = project.fetch_prepare()
        assert rc == 0, err
        assert "own: before filter 3 users / 4 items / 10 events" in out
    before_prepared = snapshot(project.prepared)
    before_raw = snapshot(project.raw)
    events, items, params = case.build()
    project.write(events, items, **params)
    rc, _, err = project.run("fetch")
    if case.stage == "fetch":
        assert rc == 2
        assert snapshot(project.raw) == before_raw
        failure = ("fetch", rc, err)
    else:
        assert rc == 0, err
        rc, out, err = project.run("prepare")
        assert out == ""
        failure = ("prepare", rc, err)
    # the later stage fails the same way on a bad profile/dataset
    rc2, _, err2 = project.run("prepare")
    assert rc2 == 2
    assert snapshot(project.prepared) == before_prepared
    assert leftovers(project.prepared.parent) == []
    return failure


def fill(fragment: str, project: OwnProject) -> str:
    return {EVENTS: str((project.root / "events.parquet").resolve()),
            ITEMS: str((project.root / "items.parquet").resolve())}.get(fragment, fragment)


@pytest.mark.parametrize("previous", [False, True], ids=["fresh", "after_good_prepare"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(project, case, previous):
    command, rc, err = run_case(project, case, previous)
    assert rc == 2
    assert command == case.stage
    assert "Traceback" not in err
    errors = ERROR_LINE.findall(err)
    assert len(errors) == 1, err
    assert errors[0][0] == case.stage
    message = errors[0][1]
    for fragment in case.expect:
        assert fill(fragment, project) in message, f"{fragment!r} not in {message!r}"
    if not previous:
        assert not project.prepared.exists()


def _stderr_cases():
    for case in CASES:
        yield pytest.param(case, id=case.id)


@pytest.mark.parametrize("case", list(_stderr_cases()))
def test_stderr_is_exactly_one_line(project, case):
    _, rc, err = run_case(project, case, previous=False)
    assert rc == 2
    lines = err.replace("\r", "\n").splitlines()
    assert len(lines) == 1, repr(err)
    assert lines[0].startswith(f"bfmscale {case.stage}: error: ")


# ---------------------------------------------------------------- accepted inputs


def test_datetime64_timestamps_are_accepted(project):
    df = good_events()
    base = pd.Timestamp("2020-01-01 00:00:00")  # 1577836800 s since the epoch
    df["timestamp"] = [base + pd.Timedelta(seconds=int(s)) for s in df["timestamp"]]
    assert pd.api.types.is_datetime64_any_dtype(df["timestamp"])
    project.write(df, good_items())
    rc, out, err = project.fetch_prepare()
    assert rc == 0, err
    events = pd.read_parquet(project.prepared / "events.parquet")
    assert events["timestamp"].dtype == "int64"
    assert sorted(events["timestamp"]) == sorted(1577836800 + s for s in good_events()["timestamp"])


def test_timezone_aware_timestamps_are_accepted(project):
    df = good_events()
    df["timestamp"] = pd.to_datetime(df["timestamp"] + 1577836800, unit="s").dt.tz_localize("UTC")
    project.write(df, good_items())
    rc, out, err = project.fetch_prepare()
    assert rc == 0, err
    events = pd.read_parquet(project.prepared / "events.parquet")
    assert sorted(events["timestamp"]) == sorted(1577836800 + s for s in good_events()["timestamp"])


def test_numeric_string_timestamps_are_accepted(project):
    df = good_events().astype({"timestamp": str})
    project.write(df, good_items())
    rc, out, err = project.fetch_prepare()
    assert rc == 0, err
    assert sorted(pd.read_parquet(project.prepared / "events.parquet")["timestamp"]) == sorted(good_events()["timestamp"])


def test_dedupe_true_drops_duplicates(project):
    df = good_events()
    dup = pd.concat([df, df.iloc[[0, 5]], df.iloc[[5]]], ignore_index=True)  # 3 extra copies of 2 events
    project.write(dup, good_items(), prepare={"dedupe": True})
    rc, out, err = project.fetch_prepare()
    assert rc == 0, err
    assert "before filter 3 users / 4 items / 10 events" in out
    events = pd.read_parquet(project.prepared / "events.parquet")
    assert len(events) == 10
    assert not events.duplicated(subset=["user", "item", "timestamp"]).any()


def test_items_file_is_optional(project):
    project.write(good_events(), None)
    rc, out, err = project.fetch_prepare()
    assert rc == 0, err
    items = pd.read_parquet(project.prepared / "items.parquet")
    assert list(items.columns) == ["item", "item_id"]
    assert list(items["item_id"]) == ["a", "b", "c", "d"]


# ---------------------------------------------------------------- column names that the prepared layout uses itself

@pytest.mark.parametrize("column", ["user", "item", "pos", "loo", "temporal", "_src", "items", "timestamps"])
def test_event_feature_named_like_a_prepared_column(project, column):
    events = good_events()
    events[column] = [100 + k for k in range(len(events))]
    project.write(events, good_items())
    assert project.run("fetch")[0] == 0
    rc, out, err = project.run("prepare")
    if rc == 2:  # acceptable: a one-line error naming the column
        errors = ERROR_LINE.findall(err)
        assert len(errors) == 1 and repr(column) in errors[0][1]
        assert not project.prepared.exists()
    else:  # or acceptable: the feature survives unchanged next to the layout's own columns
        assert rc == 0
        ev = pd.read_parquet(project.prepared / "events.parquet")
        assert sorted(ev[column]) == sorted(events[column])
        assert list(ev["pos"]) == [0, 1, 2, 0, 1, 2, 0, 1, 2, 3]


def test_item_feature_named_item(project):
    items = good_items()
    items["item"] = ["w4", "w3", "w2", "w1"]  # its own codes (w1 < w2 < ...) run opposite to the item codes
    project.write(good_events(), items)
    assert project.run("fetch")[0] == 0
    rc, out, err = project.run("prepare")
    if rc == 2:
        errors = ERROR_LINE.findall(err)
        assert len(errors) == 1 and "'item'" in errors[0][1]
    else:
        prepared = pd.read_parquet(project.prepared / "items.parquet")
        assert dict(zip(prepared["item_id"], prepared["item"])) == {"a": 1, "b": 2, "c": 3, "d": 4}
