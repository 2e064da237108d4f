"""prepare stage on hand-built synthetic tables: ordering, splits, vocabularies, filter, sequences, feature types."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pandas as pd
import pytest

from bfmscale.data.dataset import load_prepared
from bfmscale.data.prepare import PrepareConfig, prepare
from bfmscale.data.readers import RawData
from bfmscale.errors import BfmError

# Source rows in this order; u1 has a timestamp tie at its last two events (30, 30), u2 at its first two (5, 5);
# u3 has only 2 events and is dropped by min_history=3.
HAND = pd.DataFrame(
    [("u1", "a", 10), ("u2", "b", 5), ("u1", "b", 30), ("u1", "c", 20), ("u2", "a", 5),
     ("u2", "c", 7), ("u1", "d", 30), ("u3", "a", 1), ("u3", "b", 2), ("u2", "d", 8)],
    columns=["user_id", "item_id", "timestamp"],
)
# By hand: per user sorted by (timestamp, source row); ties keep source order.
# temporal cut at quantile 0.5 ("lower") of the 8 kept timestamps [5, 5, 7, 8, 10, 20, 30, 30]: index 3 -> 8.
HAND_EXPECTED = [
    # user, item, timestamp, pos, loo, temporal
    ("u1", "a", 10, 0, "train", "test"),
    ("u1", "c", 20, 1, "train", "test"),
    ("u1", "b", 30, 2, "valid", "test"),
    ("u1", "d", 30, 3, "test", "test"),
    ("u2", "b", 5, 0, "train", "train"),
    ("u2", "a", 5, 1, "train", "train"),
    ("u2", "c", 7, 2, "valid", "train"),
    ("u2", "d", 8, 3, "test", "train"),
]


def run_prepare(tmp_path, events, items=None, item_features=None, **cfg):
    raw = RawData(events=events.copy(), events_source="events.parquet",
                  items=None if items is None else items.copy(), items_source="items.parquet",
                  item_features=dict(item_features or {}))
    out = tmp_path / "prepared" / "syn"
    stats = prepare(raw, out, PrepareConfig(**cfg), "syn")
    return stats, load_prepared(out)


def decoded_events(ds) -> pd.DataFrame:
    """events.parquet with the user/item codes mapped back to raw ids through users/items.parquet."""
    users = dict(zip(ds.users["user"], ds.users["user_id"]))
    items = dict(zip(ds.items["item"], ds.items["item_id"]))
    out = ds.events.copy()
    out["user_id"] = out["user"].map(users)
    out["item_id"] = out["item"].map(items)
    return out


@pytest.fixture
def hand(tmp_path):
    return run_prepare(tmp_path, HAND, min_history=3, temporal_quantile=0.5)


def test_hand_example_order_and_splits(hand):
    stats, ds = hand
    ev = decoded_events(ds)
    got = list(ev[["user_id", "item_id", "timestamp", "pos", "loo", "temporal"]].itertuples(index=False, name=None))
    assert got == HAND_EXPECTED
    assert list(ds.events.columns) == ["user", "item", "timestamp", "pos", "loo", "temporal"]
    assert ds.events["timestamp"].dtype == "int64"


def test_hand_example_stats(hand):
    stats, ds = hand
    assert stats == ds.stats
    assert stats["before_filter"] == {"users": 3, "items": 4, "events": 10}
    assert stats["after_filter"] == {"users": 2, "items": 4, "events": 8}
    assert stats["removed_users"] == 1
    assert stats["loo"] == {"train": 4, "valid": 2, "test": 2}
    assert stats["temporal"] == {"cut_timestamp": 8, "quantile": 0.5, "train": 4, "test": 4}
    assert stats["density"] == 8 / (2 * 4)
    assert stats["sequence_length"] == {"min": 4, "median": 4.0, "mean": 4.0, "max": 4}
    assert stats["prepare"] == {"min_history": 3, "temporal_quantile": 0.5, "dedupe": False}


def test_hand_example_sequences(hand):
    _, ds = hand
    users = dict(zip(ds.users["user"], ds.users["user_id"]))
    items = dict(zip(ds.items["item"], ds.items["item_id"]))
    seqs = {users[u]: ([items[i] for i in its], list(ts))
            for u, its, ts in ds.sequences[["user", "items", "timestamps"]].itertuples(index=False)}
    assert seqs == {"u1": (["a", "c", "b", "d"], [10, 20, 30, 30]), "u2": (["b", "a", "c", "d"], [5, 5, 7, 8])}
    assert list(ds.sequences["user"]) == sorted(ds.sequences["user"])


def test_vocabulary_round_trip(hand):
    _, ds = hand
    # sorted raw ids -> contiguous codes 1..n; 0 is padding and never used
    assert list(ds.users["user_id"]) == ["u1", "u2"] and list(ds.users["user"]) == [1, 2]
    assert list(ds.items["item_id"]) == ["a", "b", "c", "d"] and list(ds.items["item"]) == [1, 2, 3, 4]
    assert ds.events["user"].min() >= 1 and ds.events["item"].min() >= 1
    assert set(ds.events["item"]) == {1, 2, 3, 4}
    assert ds.n_users == 2 and ds.n_items == 4


def _random_events(seed: int, n_users: int = 25) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    for u in range(n_users):
        for _ in range(rng.randint(1, 12)):
            rows.append((f"user{u}", f"item{rng.randint(0, 14)}", rng.randint(0, 6)))  # many timestamp ties
    rng.shuffle(rows)
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loo_and_temporal_invariants(tmp_path, seed):
    events = _random_events(seed).drop_duplicates(subset=["user_id", "item_id", "timestamp"]).reset_index(drop=True)
    q = 0.7
    stats, ds = run_prepare(tmp_path, events, min_history=3, temporal_quantile=q)
    ev = decoded_events(ds)

    # expected order per user, derived with plain Python: sort source rows by (timestamp, source row)
    expected = {}
    for row, (u, i, t) in enumerate(events.itertuples(index=False)):
        expected.setdefault(u, []).append((t, row, i))
    expected = {u: [(i, t) for t, _, i in sorted(rows)] for u, rows in expected.items() if len(rows) >= 3}
    assert set(ev["user_id"]) == set(expected)

    for u, group in ev.groupby("user_id"):
        group = group.sort_values("pos")
        assert list(group["pos"]) == list(range(len(group)))
        assert list(zip(group["item_id"], group["timestamp"])) == expected[u]
        loo = list(group["loo"])
        assert loo == ["train"] * (len(group) - 2) + ["valid", "test"]
        test_pos = int(group.loc[group["loo"] == "test", "pos"].iloc[0])
        valid_pos = int(group.loc[group["loo"] == "valid", "pos"].iloc[0])
        assert all(p < valid_pos < test_pos for p in group.loc[group["loo"] == "train", "pos"])
        # the test event is the last by time, the validation event is not after it
        assert group["timestamp"].iloc[-1] == group["timestamp"].max()

    # temporal split at the 'lower' quantile of all kept timestamps, computed by hand
    ts = sorted(ev["timestamp"])
    cut = ts[int(math.floor(q * (len(ts) - 1)))]
    assert stats["temporal"]["cut_timestamp"] == cut
    assert (ev.loc[ev["temporal"] == "train", "timestamp"] <= cut).all()
    assert (ev.loc[ev["temporal"] == "test", "timestamp"] > cut).all()
    assert set(ev["temporal"]) <= {"train", "test"}
    assert stats["temporal"].get("test", 0) == int((ev["timestamp"] > cut).sum())


def test_stable_order_on_equal_timestamps(tmp_path):
    # one user, all events at the same time: the source order is the sequence order
    events = pd.DataFrame({"user_id": ["u"] * 5, "item_id": ["e", "c", "a", "d", "b"], "timestamp": [7] * 5})
    _, ds = run_prepare(tmp_path, events, min_history=3)
    ev = decoded_events(ds)
    assert list(ev["item_id"]) == ["e", "c", "a", "d", "b"]
    assert list(ev["loo"]) == ["train", "train", "train", "valid", "test"]


def test_min_history_filter(tmp_path):
    spec = {"uA": ["p", "x"], "uB": ["p", "r", "y"], "uC": ["p", "q", "r", "t"], "uD": ["q", "r", "s", "t", "p"],
            "uE": ["s", "t", "p", "q", "r", "s"]}
    rows = [(u, i, 100 * k + j) for k, (u, its) in enumerate(spec.items()) for j, i in enumerate(its)]
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    stats, ds = run_prepare(tmp_path, events, min_history=4)
    # by hand: 5 users, items {p,q,r,s,t,x,y}, 2+3+4+5+6 events; uA and uB (2 and 3 events) are dropped
    assert stats["before_filter"] == {"users": 5, "items": 7, "events": 20}
    assert stats["after_filter"] == {"users": 3, "items": 5, "events": 15}
    assert stats["removed_users"] == 2
    assert stats["filter"] == "users with fewer than 4 events removed"
    assert stats["sequence_length"] == {"min": 4, "median": 5.0, "mean": 5.0, "max": 6}
    assert list(ds.users["user_id"]) == ["uC", "uD", "uE"]
    assert list(ds.items["item_id"]) == ["p", "q", "r", "s", "t"]
    assert len(ds.events) == 15
    # min_history=3 keeps uB too
    stats3, _ = run_prepare(tmp_path / "3", events, min_history=3)
    assert stats3["after_filter"] == {"users": 4, "items": 6, "events": 18}


def test_exactly_min_history_is_kept(tmp_path):
    events = pd.DataFrame({"user_id": ["a"] * 3 + ["b"] * 2, "item_id": list("xyzxy"), "timestamp": [1, 2, 3, 1, 2]})
    stats, ds = run_prepare(tmp_path, events, min_history=3)
    assert list(ds.users["user_id"]) == ["a"]
    assert stats["after_filter"] == {"users": 1, "items": 3, "events": 3}


def test_numeric_user_ids_are_strings(tmp_path):
    events = pd.DataFrame({"user_id": [10, 10, 10, 2, 2, 2], "item_id": [5, 6, 7, 5, 6, 7], "timestamp": [1, 2, 3, 4, 5, 6]})
    _, ds = run_prepare(tmp_path, events, min_history=3)
    # sorted as strings: "10" < "2"
    assert list(ds.users["user_id"]) == ["10", "2"] and list(ds.users["user"]) == [1, 2]
    ev = decoded_events(ds)
    assert list(zip(ev["user_id"], ev["item_id"], ev["timestamp"])) == [
        ("10", "5", 1), ("10", "6", 2), ("10", "7", 3), ("2", "5", 4), ("2", "6", 5), ("2", "7", 6)]


# ---------------------------------------------------------------- typed features and their vocabularies

FEATURE_ITEMS = pd.DataFrame({
    "item_id": ["i1", "i2", "i3", "i4", "i9"],  # i9 is in the items file but never in the events
    "brand": ["zeta", "acme", None, "acme", "omega"],
    "tags": [["b", "a"], [], ["c"], ["a", "c", "b"], ["z"]],
    "price": [9.5, float("nan"), 3.25, 100.0, 1.0],
    "desc": ["first", None, "third", "fourth", "x"],
})
FEATURE_TYPES = {"brand": "categorical", "tags": "multi_categorical", "price": "numeric", "desc": "text"}
FEATURE_EVENTS = pd.DataFrame({
    "user_id": ["u1", "u1", "u1", "u2", "u2", "u2"],
    "item_id": ["i1", "i2", "i3", "i4", "i2", "i1"],
    "timestamp": [1, 2, 3, 1, 2, 3],
    "device": ["web", "app", "web", "tv", "web", "app"],
    "rating": [4, 3, 5, 1, 2, 4],
})


def test_categorical_codes_decode_through_vocab(tmp_path):
    stats, ds = run_prepare(tmp_path, FEATURE_EVENTS, FEATURE_ITEMS, FEATURE_TYPES, min_history=3)
    assert ds.features == {"item": FEATURE_TYPES, "event": {"device": "categorical", "rating": "numeric"}}
    assert stats["item_features"] == FEATURE_TYPES
    items = ds.items.set_index("item_id")
    assert list(items.index) == ["i1", "i2", "i3", "i4"]  # only items that occur in kept events
    vocab = ds.vocab
    assert vocab["brand"] == ["acme", "zeta"]
    assert vocab["tags"] == ["a", "b", "c"]
    assert vocab["event.device"] == ["app", "tv", "web"]
    # categorical: code -> value, 0 for missing
    assert [vocab["brand"][c - 1] if c else None for c in items["brand"]] == ["zeta", "acme", None, "acme"]
    assert items["brand"].dtype == "int32"
    # multi_categorical: list of codes -> list of values, order kept
    assert [[vocab["tags"][c - 1] for c in codes] for codes in items["tags"]] == [["b", "a"], [], ["c"], ["a", "c", "b"]]
    # numeric: float32, NaN when missing
    assert items["price"].dtype == "float32"
    assert items.loc["i1", "price"] == 9.5 and math.isnan(items.loc["i2", "price"]) and items.loc["i4", "price"] == 100.0
    # text: strings, "" when missing
    assert list(items["desc"]) == ["first", "", "third", "fourth"]
    # event features follow their events
    ev = decoded_events(ds)
    src = FEATURE_EVENTS.set_index(["user_id", "item_id", "timestamp"])
    for row in ev.itertuples(index=False):
        key = (row.user_id, row.item_id, row.timestamp)
        assert vocab["event.device"][row.device - 1] == src.loc[key, "device"]
        assert row.rating == src.loc[key, "rating"]
    assert ds.events["rating"].dtype == "float32"
    # sequences carry the event features in chronological order
    seq = ds.sequences.set_index("user")
    u1 = int(ds.users.set_index("user_id").loc["u1", "user"])
    assert [vocab["event.device"][c - 1] for c in seq.loc[u1, "device"]] == ["web", "app", "web"]
    assert list(seq.loc[u1, "rating"]) == [4, 3, 5]


def test_prepare_writes_every_file_and_nothing_else(tmp_path):
    run_prepare(tmp_path, HAND, min_history=3)
    out = tmp_path / "prepared" / "syn"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["events.parquet", "items.parquet", "users.parquet", "sequences.parquet", "vocab.json", "features.json",
         "stats.json"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["syn"]
    assert json.loads((out / "features.json").read_text()) == {"item": {}, "event": {}}


def test_failed_prepare_keeps_previous_output(tmp_path):
    run_prepare(tmp_path, HAND, min_history=3)
    out = tmp_path / "prepared" / "syn"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(BfmError, match="min_history=9"):
        run_prepare(tmp_path, HAND, min_history=9)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["syn"]


# ---------------------------------------------------------------- own data: inferred and declared feature types


def _own_items(n: int = 120) -> pd.DataFrame:
    ids = [f"i{k:03d}" for k in range(n)]
    return pd.DataFrame({
        "item_id": ids,
        "price": [k * 0.5 for k in range(n)],  # float -> numeric
        "stock": list(range(n)),  # int -> numeric
        "brand": [["acme", "zeta", "omega"][k % 3] for k in range(n)],  # 3 distinct strings -> categorical
        "desc": [f"description number {k}" for k in range(n)],  # 120 > max(100, 6) distinct -> text
        "hundred": [f"h{k % 100}" for k in range(n)],  # exactly 100 distinct -> categorical (at the limit)
        "hundred1": [f"h{k % 101}" for k in range(n)],  # 101 distinct -> text
        "tags": [[f"t{k % 4}", f"t{(k + 1) % 4}"] if k % 5 else [] for k in range(n)],  # lists -> multi_categorical
        "flag": [k % 2 == 0 for k in range(n)],  # bool -> categorical
        "code": [k % 7 for k in range(n)],  # int, declared categorical
        "note": [f"note {k}" for k in range(n)],  # 120 distinct strings, declared categorical
        "color": [["red", "blue"][k % 2] for k in range(n)],  # few strings, declared text
    })


OWN_DECLARED = {"code": "categorical", "note": "categorical", "color": "text"}
OWN_EXPECTED = {"price": "numeric", "stock": "numeric", "brand": "categorical", "desc": "text", "hundred": "categorical",
                "hundred1": "text", "tags": "multi_categorical", "flag": "categorical", "code": "categorical",
                "note": "categorical", "color": "text"}


def test_own_data_feature_types(project):
    items = _own_items()
    used = ["i000", "i001", "i005", "i007", "i101"]
    basket = [["x", "y"], None, [], ["y"], ["z", "x"], ["x"]]
    events = pd.DataFrame({"user_id": ["a"] * 3 + ["b"] * 3, "item_id": [used[k] for k in (0, 1, 2, 3, 4, 0)],
                           "timestamp": [1, 2, 3, 4, 5, 6], "clicks": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                           "channel": ["web", "app", None, "web", "pos", "app"], "basket": basket})
    project.write(events, items, item_features=OWN_DECLARED)
    rc, out, err = project.fetch_prepare()
    assert rc == 0, err
    ds = load_prepared(project.prepared)
    assert ds.features["item"] == OWN_EXPECTED
    assert ds.features["event"] == {"clicks": "numeric", "channel": "categorical", "basket": "multi_categorical"}
    ev = ds.events.sort_values("timestamp")  # one event per timestamp, in the source's order
    assert [ds.vocab["event.channel"][c - 1] if c else None for c in ev["channel"]] == ["web", "app", None, "web", "pos",
                                                                                        "app"]
    assert [[ds.vocab["event.basket"][c - 1] for c in codes] for codes in ev["basket"]] == [b or [] for b in basket]

    prepared = ds.items.set_index("item_id")
    src = items.set_index("item_id")
    assert list(prepared.index) == sorted(used)
    v = ds.vocab
    for item in used:
        assert prepared.loc[item, "price"] == src.loc[item, "price"]
        assert v["brand"][prepared.loc[item, "brand"] - 1] == src.loc[item, "brand"]
        assert v["code"][prepared.loc[item, "code"] - 1] == str(src.loc[item, "code"])
        assert v["note"][prepared.loc[item, "note"] - 1] == src.loc[item, "note"]
        assert v["flag"][prepared.loc[item, "flag"] - 1] == str(src.loc[item, "flag"])
        assert prepared.loc[item, "desc"] == src.loc[item, "desc"]
        assert prepared.loc[item, "color"] == src.loc[item, "color"]
        assert [v["tags"][c - 1] for c in prepared.loc[item, "tags"]] == list(src.loc[item, "tags"])
    assert prepared.loc["i005", "tags"].tolist() == []  # k % 5 == 0 -> no tags


def test_infer_feature_type_rule():
    from bfmscale.data.readers import infer_feature_type

    assert infer_feature_type(pd.Series([1, 2, 3])) == "numeric"
    assert infer_feature_type(pd.Series([1.5, np.nan])) == "numeric"
    assert infer_feature_type(pd.Series([True, False])) == "categorical"
    assert infer_feature_type(pd.Series([None, ["a"], []], dtype=object)) == "multi_categorical"
    assert infer_feature_type(pd.Series(["a", "b", None])) == "categorical"
    # 5% of rows raises the limit above 100: 3000 rows -> limit 150
    assert infer_feature_type(pd.Series([f"v{k % 150}" for k in range(3000)])) == "categorical"
    assert infer_feature_type(pd.Series([f"v{k % 151}" for k in range(3000)])) == "text"


def test_identifier_like_event_feature_is_reported(tmp_path, caplog, monkeypatch):
    import bfmscale.data.prepare as prepare_mod

    monkeypatch.setattr(prepare_mod, "ID_LIKE_MIN_VALUES", 10)  # the real floor (1,000) needs a bigger table
    events = _random_events(0).drop_duplicates(subset=["user_id", "item_id", "timestamp"]).reset_index(drop=True)
    events["txn"] = [f"t{k}" for k in range(len(events))]  # unique per event
    events["channel"] = [["web", "app", "pos"][k % 3] for k in range(len(events))]
    with caplog.at_level("WARNING", logger="bfmscale.data.prepare"):
        run_prepare(tmp_path, events, min_history=3)
    assert [r.getMessage().split(" has ")[0] for r in caplog.records] == ["event feature 'txn'"]
